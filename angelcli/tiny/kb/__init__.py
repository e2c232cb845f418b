"""Hand-written seed knowledge for angel-tiny's medical corpus, English (`*_en`) and Chinese (`*_zh`).

Each module holds plain data: condition, symptom and medicine records with the same field names in both
languages, emergency (triage) answers, general knowledge passages and fully written dialogues. The
templates in angelcli/tiny/corpus_templates_*.py turn them into chat samples. The content is general
health information written for this project; it is careful to point to a clinician or emergency services
where that is the right answer, because a model trained on it repeats its habits.

Condition record fields (lists are short phrases that templates join into sentences or bullets):
    name, aka (other names users type), summary, symptoms, causes, diagnosis, self_care, treatment,
    red_flags ("see a doctor when ..."), prevention, specialist.
Symptom record fields: name, aka, summary, causes, self_care, red_flags.
Medicine record fields: name, aka, klass, uses, dosing, side_effects, cautions, interactions, pregnancy.
"""
