"""The two model ids tests name, so that which one a test means shows in what it imports."""

from common.settings import DEFAULT_MODEL_ID

#: The bundled default model: for tests that encode with it or need its tokenizer.
MODEL = DEFAULT_MODEL_ID
#: An id with no model files behind it: for tests where only the name matters (routing, queues,
#: fakes, requests refused before any text is tokenized).
FAKE_MODEL = "org/model"
