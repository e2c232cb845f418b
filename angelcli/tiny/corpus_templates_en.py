"""English templates: turn the seed records of angelcli/tiny/kb into chat turns.

Every generator takes a record and a `random.Random` and returns a list of turns [(user, assistant), ...].
Variety comes from several independent choices per sample: how the user phrases the question (several
templates per intent, the record's other names), how the answer opens, whether its list is bullets,
numbers or a sentence, and which closing safety line (if any) it ends with. The medical content itself
always comes from the record, never from the template.
"""

from __future__ import annotations

import random

EMERGENCY = "call your local emergency number"


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def join_en(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def join_or(items: list[str]) -> str:
    """'a', 'a, or b': for warning signs, which are alternatives and often contain 'and' themselves."""
    return ", or ".join(items)


def render_list(rng: random.Random, items: list[str]) -> str:
    """One of four list styles; the caller puts an opener before it."""
    style = rng.randrange(4)
    if style == 0:
        return "\n" + "\n".join(f"- {cap(i)}" for i in items)
    if style == 1:
        return "\n" + "\n".join(f"{k}. {cap(i)}" for k, i in enumerate(items, 1))
    if style == 2:
        return " " + join_en(items) + "."
    return " " + "; ".join(items) + "."


def pick_items(rng: random.Random, items: list[str], lo: int = 3) -> list[str]:
    """A non-empty ordered subset: usually most of the list, in the record's order (most important first)."""
    if len(items) <= lo:
        return list(items)
    n = rng.randint(lo, len(items))
    keep = sorted(rng.sample(range(len(items)), n))
    return [items[i] for i in keep]


def typed_name(rng: random.Random, rec: dict) -> str:
    """The name as a user might type it: the main name most of the time, otherwise another name."""
    if rec.get("aka") and rng.random() < 0.35:
        return rng.choice(rec["aka"])
    return rec["name"]


CLOSERS = [
    "",
    "",
    "If you are unsure, a doctor or pharmacist can give advice for your situation.",
    "This is general information; please see a clinician for advice about your own health.",
    "If symptoms are severe, sudden or worrying, seek medical help promptly.",
    "Your doctor can explain how this applies to you.",
    "Seek emergency care at once for severe symptoms such as difficulty breathing or chest pain.",
]

# ---- conditions -----------------------------------------------------------------------------------

COND_Q = {
    "overview": ["What is {n}?", "Can you explain what {n} is?", "What does it mean to have {n}?",
                 "I was just told I have {n}. What is it?", "Tell me about {n}.", "Explain {n} in simple terms.",
                 "My doctor mentioned {n}. What does that mean?", "What exactly is {n}?"],
    "symptoms": ["What are the symptoms of {n}?", "What are common signs of {n}?", "How do I know if I have {n}?",
                 "Which symptoms does {n} cause?", "How does {n} usually show up?", "What symptoms should make me think of {n}?"],
    "causes": ["What causes {n}?", "Who is at risk of {n}?", "What are the risk factors for {n}?",
               "Why do people get {n}?", "What increases the chance of getting {n}?"],
    "diagnosis": ["How is {n} diagnosed?", "What tests are used for {n}?", "How do doctors confirm {n}?",
                  "What test would show {n}?"],
    "self_care": ["How can I manage {n} at home?", "What can I do myself to help with {n}?", "Any self-care tips for {n}?",
                  "What lifestyle changes help with {n}?", "How should I look after myself if I have {n}?"],
    "treatment": ["How is {n} treated?", "What is the treatment for {n}?", "What are the treatment options for {n}?",
                  "What medicines are used for {n}?", "How do doctors treat {n}?"],
    "red_flags": ["When should I see a doctor about {n}?", "What {n} symptoms need urgent care?", "When is {n} an emergency?",
                  "What are the danger signs with {n}?", "When should I go to hospital with {n}?"],
    "prevention": ["How can I prevent {n}?", "Can {n} be prevented?", "How do I lower my risk of {n}?",
                   "What reduces the risk of {n}?"],
    "specialist": ["Which doctor should I see for {n}?", "What kind of specialist treats {n}?", "Who should I talk to about {n}?"],
}

COND_FOLLOW = {
    "overview": ["What is it exactly?", "Can you explain what it is first?"],
    "symptoms": ["What are the symptoms?", "How would I notice it?", "What signs should I look for?"],
    "causes": ["What causes it?", "Why does it happen?", "Am I at risk?"],
    "diagnosis": ["How is it diagnosed?", "What tests would I need?"],
    "self_care": ["What can I do at home?", "Is there anything I can do myself?", "What lifestyle changes help?"],
    "treatment": ["How is it treated?", "What treatment is there?", "Are there medicines for it?"],
    "red_flags": ["When should I worry?", "When should I see a doctor?", "What would be an emergency?"],
    "prevention": ["Can it be prevented?", "How can I avoid it?"],
    "specialist": ["Who should I see about it?", "Which kind of doctor handles this?"],
}

_OPEN = {
    "symptoms": ["Common symptoms of {n} include:", "People with {n} often notice:", "Typical signs of {n} are:",
                 "{N} can cause:", "The main symptoms are:"],
    "causes": ["Causes and risk factors for {n} include:", "The main risk factors are:", "{N} is linked to:",
               "Things that raise the risk of {n}:"],
    "self_care": ["Things that help with {n} include:", "Helpful self-care steps:", "At home, you can:",
                  "Practical steps for {n}:"],
    "red_flags": ["See a doctor promptly, or get emergency help, if you have:", "Warning signs with {n} include:",
                  "Seek urgent medical help for:", "Get medical help quickly if there is:"],
    "prevention": ["Ways to lower the risk of {n}:", "To reduce your risk:", "Prevention focuses on:"],
}


def _opener(rng: random.Random, intent: str, name: str) -> str:
    return rng.choice(_OPEN[intent]).format(n=name, N=cap(name))


def _closer(rng: random.Random) -> str:
    c = rng.choice(CLOSERS)
    return f"\n\n{c}" if c else ""


def condition_answer(rng: random.Random, c: dict, intent: str) -> str:
    n = c["name"]
    if intent == "overview":
        out = c["summary"]
        sym = [s for s in c["symptoms"] if "no symptom" not in s]
        if sym and rng.random() < 0.6:
            out += f" Common symptoms include {join_en(sym[:3])}."
        if rng.random() < 0.4:
            out += f" It is usually managed by {c['specialist']}."
        return out + _closer(rng)
    if intent in ("symptoms", "causes", "self_care", "prevention"):
        out = _opener(rng, intent, n) + render_list(rng, pick_items(rng, c[intent]))
        if intent in ("symptoms", "self_care") and rng.random() < 0.6:
            out += f"\n\nSee a doctor promptly if you notice {join_or(c['red_flags'][:2])}."
        return out + _closer(rng)
    if intent == "red_flags":
        out = _opener(rng, intent, n) + render_list(rng, c["red_flags"])
        tail = rng.choice([
            f"\n\nIf symptoms are sudden or severe, {EMERGENCY} or go to the nearest emergency department.",
            f"\n\nFor milder symptoms that do not improve, book an appointment with {c['specialist']}.",
            f"\n\nIn an emergency, {EMERGENCY}. Otherwise, arrange to see {c['specialist']}.",
        ])
        return out + tail
    if intent == "diagnosis":
        tail = rng.choice(["", f" If you are worried, ask {c['specialist']} about testing.",
                           " Your doctor will decide which tests you need."])
        return c["diagnosis"] + tail + _closer(rng)
    if intent == "treatment":
        tail = rng.choice([f" Treatment is tailored to each person, so discuss the options with {c['specialist']}.",
                           " Do not start or stop prescription medicines without talking to your doctor.",
                           f" Self-care also matters: {join_en(c['self_care'][:2])}."])
        return c["treatment"] + tail + _closer(rng)
    if intent == "specialist":
        return (f"{cap(n)} is usually looked after by {c['specialist']}. " + c["summary"]
                + rng.choice(["", " Bring a list of your symptoms and medicines to the appointment."]))
    raise ValueError(intent)


def condition_single(rng: random.Random, c: dict, intent: str) -> list[tuple[str, str]]:
    q = rng.choice(COND_Q[intent]).format(n=typed_name(rng, c))
    return [(cap(q), condition_answer(rng, c, intent))]


def condition_multi(rng: random.Random, c: dict) -> list[tuple[str, str]]:
    intents = rng.sample(list(COND_Q), rng.randint(2, 4))
    turns = [(cap(rng.choice(COND_Q[intents[0]]).format(n=typed_name(rng, c))), condition_answer(rng, c, intents[0]))]
    for it in intents[1:]:
        turns.append((rng.choice(COND_FOLLOW[it]), condition_answer(rng, c, it)))
    return turns


_CASE_Q = ["I have these symptoms: {s}. What could it be?", "For a few days I've noticed {s}. Should I be worried?",
           "My {who} has {s}. What might be going on?", "What could cause {s}?",
           "I'm experiencing {s}. Do I need to see a doctor?"]
_WHO = ["husband", "wife", "mother", "father", "son", "daughter", "friend", "grandmother", "colleague"]


def case_symptoms(rng: random.Random, c: dict) -> list[str] | None:
    """Two or three of the condition's symptoms a patient could describe (None when it lists fewer than two)."""
    sym = [s for s in c["symptoms"] if "no symptom" not in s and not s.startswith("no ")]
    if len(sym) < 2:
        return None
    return rng.sample(sym, min(len(sym), rng.randint(2, 3)))


def condition_case(rng: random.Random, c: dict) -> list[tuple[str, str]] | None:
    """A symptom presentation answered with a hedged possibility, never a diagnosis."""
    chosen = case_symptoms(rng, c)
    if chosen is None:
        return None
    q = rng.choice(_CASE_Q).format(s=join_en(chosen), who=rng.choice(_WHO))
    a = (rng.choice(["These symptoms can have several causes, and I can't diagnose you, but",
                     "Many conditions can cause this, so a proper assessment matters. That said,",
                     "It is not possible to be sure without an examination, but"])
         + f" one possibility is {c['name']}. {c['summary']}\n\n"
         + f"Please arrange to see {c['specialist']} for an assessment"
         + rng.choice([". ", f"; {c['diagnosis'][0].lower()}{c['diagnosis'][1:]} "])
         + f"Get urgent help if you have {join_or(c['red_flags'][:2])}.")
    return [(q, a)]


# ---- symptoms -------------------------------------------------------------------------------------

SYM_Q = {
    "causes": ["What causes {n}?", "What can cause {n}?", "Why would someone have {n}?", "I keep getting {n}. Why?"],
    "self_care": ["How can I relieve {n} at home?", "What helps with {n}?", "What should I do about {n}?",
                  "Any tips for dealing with {n}?"],
    "red_flags": ["When should I see a doctor for {n}?", "When is {n} serious?", "When is {n} an emergency?",
                  "What {n} warning signs should I watch for?"],
    "all": ["I have {n}. What should I do?", "I've had {n} since yesterday. Any advice?", "Tell me about {n}."],
}


def symptom_answer(rng: random.Random, s: dict, intent: str) -> str:
    n = s["name"]
    if intent == "causes":
        return (s["summary"] + "\n\n" + rng.choice(["Possible causes include:", "Common causes are:", f"{cap(n)} can be caused by:"])
                + render_list(rng, pick_items(rng, s["causes"])) + _closer(rng))
    if intent == "self_care":
        return (rng.choice(["You can try:", "Things that often help:", "Self-care steps:"]) + render_list(rng, pick_items(rng, s["self_care"]))
                + f"\n\nSee a doctor if you have {join_or(s['red_flags'][:2])}." + _closer(rng))
    if intent == "red_flags":
        return (rng.choice(["Seek medical help, urgently if severe, for:", f"Warning signs with {n}:", "Get checked promptly if there is:"])
                + render_list(rng, s["red_flags"])
                + f"\n\n{rng.choice(['For sudden or severe symptoms', 'In an emergency'])}, {EMERGENCY}.")
    if intent == "all":
        return (s["summary"] + "\n\nWhat you can do:" + render_list(rng, pick_items(rng, s["self_care"]))
                + "\n\nSee a doctor or get urgent help if:" + render_list(rng, s["red_flags"]))
    raise ValueError(intent)


def symptom_single(rng: random.Random, s: dict, intent: str) -> list[tuple[str, str]]:
    q = rng.choice(SYM_Q[intent]).format(n=typed_name(rng, s))
    return [(cap(q), symptom_answer(rng, s, intent))]


# ---- medicines ------------------------------------------------------------------------------------

MED_Q = {
    "uses": ["What is {n} used for?", "Why would a doctor prescribe {n}?", "What does {n} treat?", "What kind of medicine is {n}?"],
    "dosing": ["How should I take {n}?", "What is the usual dose of {n}?", "How much {n} can I take?", "How often can I take {n}?"],
    "side_effects": ["What are the side effects of {n}?", "Does {n} have side effects?", "What side effects can {n} cause?"],
    "cautions": ["What should I be careful about with {n}?", "Who should not take {n}?", "Are there any warnings for {n}?"],
    "interactions": ["What interacts with {n}?", "Can I take {n} with other medicines?", "What should I avoid while taking {n}?"],
    "pregnancy": ["Can I take {n} while pregnant?", "Is {n} safe in pregnancy?", "Can I use {n} when breastfeeding?"],
}
MED_FOLLOW = {
    "uses": ["What is it for?"], "dosing": ["How do I take it?", "What dose is normal?"],
    "side_effects": ["Any side effects?", "What side effects should I expect?"],
    "cautions": ["Anything I should be careful about?", "Who shouldn't take it?"],
    "interactions": ["Does it interact with anything?", "What should I avoid with it?"],
    "pregnancy": ["Is it OK in pregnancy?", "What about breastfeeding?"],
}
LABEL = ["Always follow the label or your prescriber's instructions.",
         "Follow the dose on the label or prescription, and ask a pharmacist if unsure.",
         "Your prescriber or pharmacist can confirm the right dose for you."]


def medicine_answer(rng: random.Random, m: dict, intent: str) -> str:
    n = m["name"]
    if intent == "uses":
        return (f"{cap(n)} is {m['klass']}. "
                + rng.choice(["It is used for:", "Common uses:", "It is prescribed or taken for:"])
                + render_list(rng, pick_items(rng, m["uses"], lo=2)) + _closer(rng))
    if intent == "dosing":
        return m["dosing"] + " " + rng.choice(LABEL) + rng.choice(["", " Do not take more than recommended."])
    if intent == "side_effects":
        return (rng.choice([f"Common side effects of {n} include:", "Possible side effects:", f"{cap(n)} can cause:"])
                + render_list(rng, m["side_effects"])
                + "\n\n" + rng.choice(["Important cautions: ", "Also note: "]) + "; ".join(m["cautions"][:2]) + "."
                + _closer(rng))
    if intent == "cautions":
        return (rng.choice([f"Things to know before taking {n}:", "Important cautions:", "Take care with the following:"])
                + render_list(rng, m["cautions"]) + "\n\n" + rng.choice(LABEL))
    if intent == "interactions":
        return (rng.choice([f"{cap(n)} can interact with:", "Medicines and substances to be careful with:", "Known interactions include:"])
                + render_list(rng, m["interactions"])
                + "\n\nTell your doctor or pharmacist about every medicine and supplement you take.")
    if intent == "pregnancy":
        return m["pregnancy"] + " " + rng.choice(["Always check with your doctor, midwife or pharmacist first.",
                                                  "Discuss any medicine with your maternity team before taking it."])
    raise ValueError(intent)


def medicine_single(rng: random.Random, m: dict, intent: str) -> list[tuple[str, str]]:
    q = rng.choice(MED_Q[intent]).format(n=typed_name(rng, m))
    return [(cap(q), medicine_answer(rng, m, intent))]


def medicine_multi(rng: random.Random, m: dict) -> list[tuple[str, str]]:
    intents = rng.sample(list(MED_Q), rng.randint(2, 3))
    turns = [(cap(rng.choice(MED_Q[intents[0]]).format(n=typed_name(rng, m))), medicine_answer(rng, m, intents[0]))]
    for it in intents[1:]:
        turns.append((rng.choice(MED_FOLLOW[it]), medicine_answer(rng, m, it)))
    return turns


# ---- triage, passages, dialogues --------------------------------------------------------------------

_PREFIX = ["", "", "", "Please help: ", "Quick question. ", "Urgent: ", "Hi, "]


def triage_samples(rng: random.Random, t: dict) -> list[list[tuple[str, str]]]:
    return [[(rng.choice(_PREFIX) + q, t["a"])] for q in t["q"]]


def passage_samples(rng: random.Random, p: dict) -> list[list[tuple[str, str]]]:
    out = [[(q, p["text"])] for q in p["q"]]
    first_two = ". ".join(p["text"].split(". ")[:2]).rstrip(".") + "."
    out.append([(rng.choice(["In short: ", "Briefly, ", "In one or two sentences: "]) + p["q"][0][0].lower() + p["q"][0][1:],
                 first_two)])
    return out


def dialogue_samples(d: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The whole conversation plus its opening turn on its own (they share replies, so one split gets both)."""
    return [list(d), [d[0]]]
