"""Benchmarks: tests may import bench (they test its cost models and simulator), bench never
imports tests, and what both build (tiny models, random adapters) lives in `loraq.testing`."""
