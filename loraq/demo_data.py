"""Built-in retrieval data for the demo adapters, so creating them needs no downloads.

Each domain pairs jargon-heavy passages with plain-language questions. That gap is what a general
embedding model handles worst and what a small domain adapter can visibly close. Several passages
share surface words (chest pain, landlord, creditors) so a query must match meaning, not
vocabulary. The held-out queries are paraphrases never trained on: the honest measure of whether
an adapter learned the domain or just memorized its training questions.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Domain:
    name: str
    passages: tuple[str, ...]
    #: (query, index of its gold passage)
    train: tuple[tuple[str, int], ...]
    held_out: tuple[tuple[str, int], ...]
    seed: int

    def train_pairs(self) -> list[tuple[str, str]]:
        return [(query, self.passages[gold]) for query, gold in self.train]


LEGAL = Domain(
    name="legal",
    seed=11,
    passages=(
        "Adverse possession vests title in a claimant whose possession of realty has been open, "
        "notorious, hostile, exclusive and continuous for the statutory period.",
        "A prescriptive easement arises from open, notorious and continuous non-permissive use of "
        "a servient estate for the statutory period; it confers a right of use, not title.",
        "An unlawful detainer action is a summary proceeding by which a lessor recovers "
        "possession of premises from a lessee holding over after termination or rent default.",
        "The implied warranty of habitability obliges a lessor to keep residential premises fit "
        "for habitation; a material breach may justify rent abatement or repair-and-deduct.",
        "A lessor must refund the security deposit within the statutory period after surrender "
        "of the premises, less itemized deductions for damage beyond ordinary wear and tear.",
        "A limitations period bars any claim not commenced within the prescribed time after "
        "accrual; tolling doctrines such as the discovery rule may suspend its running.",
        "Under the statute of frauds, contracts for the sale of an interest in land, or not "
        "performable within one year, are unenforceable absent a writing signed by the party.",
        "Promissory estoppel renders a gratuitous promise enforceable where the promisee "
        "reasonably and detrimentally relied on it and injustice is avoidable only by enforcement.",
        "Under respondeat superior, a principal bears vicarious liability for torts committed by "
        "its agent or servant acting within the scope of employment.",
        "Defamation requires an unprivileged false statement of fact, published to a third "
        "party, that injures reputation; libel is written, slander oral, and truth a defense.",
        "When a decedent dies intestate, the estate passes under the statutes of descent and "
        "distribution to heirs in a prescribed order, typically the surviving spouse and issue.",
        "A durable power of attorney authorizes an agent to act on behalf of the principal and, "
        "unlike an ordinary agency, survives the principal's subsequent incapacity.",
        "A restrictive covenant not to compete is enforceable only if reasonable in duration and "
        "geographic scope and necessary to protect a legitimate business interest.",
        "Upon the filing of a petition, the automatic stay enjoins creditors from collection "
        "activity against the debtor, including foreclosure, repossession and litigation.",
        "Garnishment is a post-judgment remedy by which a judgment creditor obtains an order "
        "directing a third party, such as an employer, to remit part of the debtor's earnings.",
        "Statements elicited through custodial interrogation are inadmissible unless the suspect "
        "was advised of the privilege against self-incrimination and right to counsel and waived.",
        "A warrantless search is presumptively unreasonable under the Fourth Amendment unless an "
        "exception applies: consent, exigent circumstances, or the automobile exception.",
        "Courts may pierce the corporate veil and impose personal liability on shareholders "
        "where the entity is an alter ego, undercapitalized, or used to perpetrate fraud.",
        "A default judgment may be entered against a defendant who fails to plead or otherwise "
        "defend within the time allowed after service of process.",
        "Under the at-will doctrine either party may terminate employment for any lawful reason "
        "or none, subject to exceptions for discrimination, retaliation and public policy.",
    ),
    train=(
        ("my neighbor built a fence on my land 20 years ago, is that strip his now?", 0),
        ("can someone become the owner of property just by living on it long enough", 0),
        ("the neighbors have walked a path across my backyard for decades, can I stop them?", 1),
        ("right to keep using a driveway that crosses somebody else's lot", 1),
        ("my landlord wants to kick me out, how does that process work", 2),
        ("tenant stopped paying and refuses to leave, how do I get him out", 2),
        ("landlord won't fix the heating or the mold, do I still have to pay rent", 3),
        ("no hot water for weeks, can I fix it myself and take the cost off my rent", 3),
        ("landlord kept my deposit for normal scuffs on the walls", 4),
        ("how long does my old landlord have to give me my money back after I move out", 4),
        ("is it too late to sue over a car crash from five years ago", 5),
        ("deadline for taking someone to court", 5),
        ("we agreed on a price for the house with a handshake, is that binding", 6),
        ("does a verbal agreement to buy land hold up", 6),
        ("he promised me a job so I quit mine and moved across the country, then he backed out", 7),
        ("grandpa promised to pay my tuition so I enrolled, now he refuses", 7),
        ("a delivery driver rear-ended me, can I sue the company instead of him", 8),
        ("is a business responsible when its worker hurts someone on the job", 8),
        ("a coworker is spreading lies that I stole money", 9),
        ("someone posted false things about my shop online and I lost customers", 9),
        ("my dad died without a will, who gets his house", 10),
        ("mom passed away and left no paperwork, do her kids inherit", 10),
        ("how can my son handle my bank accounts if I get dementia", 11),
        ("letting someone sign papers for me once I'm no longer able to", 11),
        ("my old boss says I can't work for a competitor for two years", 12),
        ("I signed something saying I can't open a rival shop in this city", 12),
        ("will filing for bankruptcy stop the bank from taking my house", 13),
        ("creditors keep calling, does declaring bankruptcy make them stop", 13),
        ("a debt collector is taking money straight out of my paycheck", 14),
        ("can they take part of my salary to pay an old court debt", 14),
        ("police questioned me without reading me my rights", 15),
        ("cops kept asking me questions after I asked for a lawyer", 15),
        ("can cops search my car without a warrant", 16),
        ("police came into my house without permission and looked around", 16),
        ("the company that owes me money went broke, can I go after the owner personally", 17),
        ("can I sue the owner of the LLC himself", 17),
        ("what happens if I ignore a lawsuit and don't show up", 18),
        ("I never answered the court papers and now they won automatically", 18),
        ("can my boss fire me for no reason", 19),
        ("got let go without any explanation, is that legal", 19),
    ),
    held_out=(
        ("I've been mowing and fencing the empty lot next door for 15 years, is it mine now", 0),
        ("the apartment has broken windows and roaches and the owner ignores me, must I pay", 3),
        ("moved out a month ago and the owner still hasn't returned the money I paid upfront", 4),
        ("my contractor botched the job six years ago, can I still do something about it", 5),
        ("my uncle said he'd sell me his farm but we never put anything on paper", 6),
        ("a pizza place's driver crashed into my bike, is the restaurant responsible", 8),
        ("my ex told everyone on Facebook that I'm a thief and it's not true", 9),
        ("grandma passed away without leaving instructions about her things, who gets them", 10),
        ("my contract says I can't do the same kind of work anywhere in the state if I quit", 12),
        ("if I file chapter 7, can the lender still take back my car", 13),
        ("the officer never told me I could stay quiet before questioning me at the station", 15),
        ("I forgot to respond to the papers I was served and the other side won", 18),
    ),
)

MEDICAL = Domain(
    name="medical",
    seed=13,
    passages=(
        "Acute myocardial infarction follows occlusion of a coronary artery, causing ischemic "
        "necrosis; it presents with substernal pressure radiating to the arm or jaw and "
        "diaphoresis.",
        "Stable angina pectoris is transient myocardial ischemia provoked by exertion or "
        "emotional stress and relieved within minutes by rest or sublingual nitroglycerin.",
        "Gastroesophageal reflux disease reflects an incompetent lower esophageal sphincter; "
        "retrograde gastric acid causes retrosternal pyrosis and regurgitation, worse supine.",
        "Biliary colic occurs when a calculus transiently obstructs the cystic duct, causing "
        "postprandial right upper quadrant pain that may radiate to the right scapula.",
        "Acute appendicitis begins as periumbilical visceral pain that migrates to McBurney's "
        "point in the right lower quadrant, with anorexia, low-grade fever and rebound tenderness.",
        "Migraine without aura is a unilateral, pulsatile cephalgia lasting 4 to 72 hours with "
        "photophobia, phonophobia and nausea, aggravated by routine physical activity.",
        "A transient ischemic attack is a brief focal neurological deficit such as hemiparesis, "
        "facial palsy or aphasia from cerebral ischemia without infarction; stroke risk is high.",
        "Benign paroxysmal positional vertigo results from otoconia displaced into a semicircular "
        "canal, producing brief rotatory vertigo provoked by changes in head position.",
        "Primary hypothyroidism, most often from Hashimoto thyroiditis, causes fatigue, cold "
        "intolerance, weight gain, constipation and xerosis, with raised TSH and low free T4.",
        "Type 2 diabetes mellitus combines insulin resistance with relative insulin deficiency; "
        "hyperglycemia produces polyuria and polydipsia, and an HbA1c of 6.5% is diagnostic.",
        "Hypoglycemia below 70 mg/dL triggers adrenergic tremor, diaphoresis and palpitations "
        "and neuroglycopenic confusion; it is treated with 15 g of rapid-acting carbohydrate.",
        "Deep vein thrombosis is thrombus formation in a deep vein of the lower extremity, "
        "presenting with unilateral calf edema, warmth and tenderness after immobilization.",
        "Spontaneous pneumothorax is air in the pleural space with partial pulmonary collapse, "
        "causing abrupt pleuritic pain and dyspnea, classically in tall, thin young males.",
        "Gout is an inflammatory arthropathy from monosodium urate crystal deposition, "
        "classically acute podagra: an exquisitely tender, erythematous first MTP joint.",
        "Plantar fasciitis is degenerative enthesopathy of the plantar aponeurosis at its "
        "calcaneal insertion, with pain maximal on the first steps after rest.",
        "Carpal tunnel syndrome is median nerve compression beneath the transverse carpal "
        "ligament, causing nocturnal paresthesia of the radial digits and thenar weakness.",
        "Acute otitis media is suppurative infection of the middle ear, common in young "
        "children, with otalgia, pyrexia and a bulging, erythematous tympanic membrane.",
        "Herpes zoster is reactivation of latent varicella-zoster virus in a sensory ganglion, "
        "producing a painful vesicular eruption confined to a single dermatome.",
        "Obstructive sleep apnea is recurrent upper airway collapse during sleep, with stertorous "
        "respiration, witnessed apneas, oxygen desaturation and daytime hypersomnolence.",
        "Vasovagal syncope is transient loss of consciousness from reflex bradycardia and "
        "vasodilation, triggered by prolonged standing, pain or venipuncture, with prodromal "
        "pallor.",
    ),
    train=(
        ("crushing feeling in my chest spreading down my left arm and I'm sweating", 0),
        ("my dad said it felt like an elephant sitting on his chest and his jaw hurt", 0),
        ("my chest gets tight when I climb stairs but it goes away when I sit down", 1),
        ("pain in my chest only when I exercise or get upset", 1),
        ("burning behind my breastbone after big dinners", 2),
        ("sour liquid comes up into my throat when I lie down", 2),
        ("sharp pain under my right ribs after eating greasy food", 3),
        ("stomach ache after fried food that spreads to my shoulder blade", 3),
        ("pain started around my belly button and moved to the lower right side", 4),
        ("my kid's tummy hurts on the bottom right, he has a fever and won't eat", 4),
        ("pounding headache on one side, light hurts my eyes and I feel sick", 5),
        ("bad headaches that make me lie down in a dark quiet room for a day", 5),
        ("my mom's face drooped and she couldn't talk for ten minutes, then she was fine", 6),
        ("one arm went weak and numb for a few minutes and then came back", 6),
        ("the room spins when I roll over in bed", 7),
        ("dizzy for a few seconds whenever I look up or bend down", 7),
        ("always cold, tired and gaining weight for no reason", 8),
        ("dry skin, constipation and feeling sluggish all the time", 8),
        ("always thirsty and peeing a lot", 9),
        ("the doctor said my A1c blood sugar number is too high", 9),
        ("got shaky and sweaty after skipping lunch, what helps", 10),
        ("what to do when my sugar drops too low and I feel confused", 10),
        ("one calf is swollen, warm and sore after a long flight", 11),
        ("my leg swelled up after surgery and hurts to touch", 11),
        ("sudden stabbing chest pain and can't catch my breath, tall skinny teenager", 12),
        ("what does a collapsed lung feel like", 12),
        ("my big toe is red, hot and so painful even the bedsheet hurts", 13),
        ("joint flare-up after drinking beer and eating steak", 13),
        ("the bottom of my heel hurts most when I get out of bed in the morning", 14),
        ("stabbing heel pain with the first steps of the day", 14),
        ("my fingers go numb and tingle at night and wake me up", 15),
        ("hand tingling from typing all day, my thumb feels weak", 15),
        ("toddler tugging at his ear with a fever", 16),
        ("my child has an earache and is cranky at night", 16),
        ("painful blistery rash in a stripe on one side of my back", 17),
        ("I had chickenpox as a kid, now I have a painful rash on one side", 17),
        ("my husband snores loudly and stops breathing at night", 18),
        ("always sleepy during the day even though I sleep eight hours and snore", 18),
        ("I fainted when I saw blood", 19),
        ("felt lightheaded and passed out after standing in the heat at a wedding", 19),
    ),
    held_out=(
        ("a tight band around my chest when I walk uphill in the cold, gone after a rest", 1),
        ("acid taste in my mouth and my chest burns at night", 2),
        ("ache under my right ribs a couple of hours after eating pizza", 3),
        ("throbbing headache on the left side all day, noise makes it worse", 5),
        ("half of her face suddenly sagged and her speech was slurred for a few minutes", 6),
        ("everything whirls around for a moment when I lie down quickly", 7),
        ("hair thinning, freezing all the time and I can't lose weight", 8),
        ("my leg is swollen and painful after weeks of bed rest", 11),
        ("woke up with my big toe swollen and burning hot", 13),
        ("numbness in my hand when I drive or hold my phone", 15),
        ("my baby keeps pulling her ear, crying, and has a temperature", 16),
        ("blacked out for a second while getting blood drawn", 19),
    ),
)

DOMAINS: tuple[Domain, ...] = (LEGAL, MEDICAL)
