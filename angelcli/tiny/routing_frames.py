"""Question frames for angel-tiny's routing examples (angelcli/tiny/routing_data.py), per language and
(record kind, intent). "{n}" is a name of the record, "{N}" the same capitalised, "{who}" a family member.

Written for this purpose, apart from the corpus templates (corpus_templates_*.py, corpus_v3.EXTRA_Q) and from
the probe questions (prompts.jsonl, probe_heldout.jsonl; a test checks that no routing question is one of
them): the point is many more wordings of each intent than the templates have, so that the words around a
name stop predicting the record and the name does.

NAMED:  the name inside one sentence ("What triggers {n}?").
LEAD / FOLLOW: two sentences, the name in the first and the intent in the second ("My {who} has {n}." +
"What should we watch out for?"), the order users write when they start with their situation.
CASE: symptom descriptions that name no record ("{s}" is two or three of the record's symptoms).
LAY_Q / THEY_Q / GUESS_Q: the same in everyday words (routing_lay.py): "{s1}".."{s3}" first-person clauses ("it
stings when I pee"), "{v1}", "{v2}" third-person verb phrases ("keeps getting up at night to pee"), "{g}" the
name a worried patient guesses ("a water infection"; "{g}" in GUESS_ADJ_Q is an adjective such as "anaemic").
"""

from __future__ import annotations

NAMED = {
    "en": {
        ("condition", "overview"): [
            "What is {n} exactly?", "Could you tell me what {n} is?", "What should I know about {n}?",
            "I don't really understand {n}. Can you explain?", "What happens in the body with {n}?",
            "Give me a short explanation of {n}.", "How serious is {n}?", "Is {n} a common problem?",
            "What kind of illness is {n}?", "{N}: what is it?"],
        ("condition", "symptoms"): [
            "What does {n} feel like?", "What are the first signs of {n}?", "How would I know if I had {n}?",
            "What symptoms go with {n}?", "What are typical {n} symptoms?", "Which signs point to {n}?",
            "How can you tell if someone has {n}?", "Does {n} cause any symptoms?", "{N} symptoms?",
            "What should I look out for with {n}?"],
        ("condition", "causes"): [
            "What leads to {n}?", "How do people end up with {n}?", "What triggers {n}?", "Why did I get {n}?",
            "Is {n} caused by something I did?", "What puts someone at risk of {n}?", "Where does {n} come from?",
            "Is {n} hereditary or caused by lifestyle?"],
        ("condition", "diagnosis"): [
            "How do I find out if I have {n}?", "Is there a test for {n}?", "Which tests check for {n}?",
            "How will the doctor check for {n}?", "How is {n} picked up?", "Can a blood test show {n}?"],
        ("condition", "self_care"): [
            "What can I do at home for {n}?", "How do I live with {n}?", "What should I eat when I have {n}?",
            "Which foods are good for {n}?", "What should I avoid if I have {n}?", "Can exercise help {n}?",
            "How do I cope with {n} day to day?", "Tips for living with {n}?", "What diet is best for {n}?",
            "Can {n} get better with lifestyle changes?", "How can I help my {who} with {n}?"],
        ("condition", "treatment"): [
            "What's the best treatment for {n}?", "Which medication is used for {n}?", "How do you get rid of {n}?",
            "Is there a cure for {n}?", "What do doctors prescribe for {n}?", "Do I need tablets for {n}?",
            "What are my options for treating {n}?", "Will {n} need medicine for life?"],
        ("condition", "red_flags"): [
            "When is {n} dangerous?", "What signs of {n} mean I should go to A&E?", "Should I go to the ER with {n}?",
            "At what point should I worry about {n}?", "What are the warning signs that {n} is getting worse?",
            "Can {n} become an emergency?", "When does {n} need a doctor straight away?"],
        ("condition", "prevention"): [
            "How do I avoid getting {n}?", "What can I do to stop {n} happening?", "Is there a way to prevent {n}?",
            "How do I keep from getting {n} again?", "Does anything lower the chance of {n}?",
            "Can I stop {n} from coming back?"],
        ("condition", "specialist"): [
            "Who treats {n}?", "What doctor do I need for {n}?", "Should I see a specialist for {n}?",
            "Which clinic deals with {n}?", "Do I need a referral for {n}?"],
        ("symptom", "causes"): [
            "Why do I have {n}?", "What could be causing my {n}?", "What is behind {n}?", "Why does {n} happen?",
            "What makes {n} start?", "Is {n} a sign of something?", "Why would {n} keep coming back?"],
        ("symptom", "self_care"): [
            "How can I stop {n}?", "What is good for {n}?", "How do I ease {n} at home?", "Home remedies for {n}?",
            "What should I take for {n}?", "How can I feel better with {n}?", "What do you recommend for {n}?",
            "What can my {who} do about {n}?", "Best way to deal with {n}?"],
        ("symptom", "red_flags"): [
            "Is {n} dangerous?", "When do I need to worry about {n}?", "Is {n} a reason to see a doctor?",
            "When should {n} be checked by a doctor?", "Could {n} be an emergency?", "Should I go to hospital for {n}?"],
        ("symptom", "all"): [
            "I've got {n}. What now?", "Help, I have {n}.", "I'm suffering from {n}. Advice please.",
            "{N} for two days now. What should I do?", "My {who} has {n}. What do you suggest?",
            "What do I need to know about {n}?"],
        ("medicine", "uses"): [
            "What is {n} prescribed for?", "What conditions does {n} treat?", "How does {n} work?",
            "What is the purpose of {n}?", "Why do people take {n}?", "My doctor gave me {n}. What is it for?",
            "What's {n}?", "What does {n} help with?"],
        ("medicine", "dosing"): [
            "How much {n} should I take?", "What dose of {n} is safe?", "How many times a day can I take {n}?",
            "When should I take {n}?", "What is the maximum dose of {n}?", "Should I take {n} with food?",
            "What happens if I take too much {n}?", "How long should I take {n} for?"],
        ("medicine", "side_effects"): [
            "Are there side effects with {n}?", "Can {n} make you feel sick?", "What are the risks of {n}?",
            "I started {n}. What side effects should I watch for?", "Is {n} bad for you?",
            "What are the downsides of {n}?", "Can {n} cause problems?"],
        ("medicine", "cautions"): [
            "Is {n} safe for me?", "Who can't take {n}?", "What precautions are needed with {n}?",
            "What are the warnings for {n}?", "Is {n} safe for older people?", "Who should avoid {n}?"],
        ("medicine", "interactions"): [
            "Can I drink alcohol with {n}?", "Is it OK to have a beer while on {n}?", "Does {n} interact with other drugs?",
            "Can {n} be taken with other medicines?", "What should I not take with {n}?", "Can I mix {n} with painkillers?",
            "Which drugs clash with {n}?"],
        ("medicine", "pregnancy"): [
            "Is {n} OK during pregnancy?", "I'm pregnant. Can I take {n}?", "Is {n} safe when breastfeeding?",
            "Can pregnant women use {n}?", "Is {n} safe for the baby?"],
    },
    "zh": {
        ("condition", "overview"): ["{n}到底是什么？", "能跟我说说{n}吗？", "{n}严重吗？", "{n}是一种什么样的病？",
                                    "听说{n}，这是什么病啊？", "{n}要紧吗？"],
        ("condition", "symptoms"): ["{n}一开始有什么症状？", "{n}有什么信号？", "得了{n}会怎么样？", "{n}的表现有哪些？",
                                    "怎么判断是不是{n}？", "{n}早期有什么表现？"],
        ("condition", "causes"): ["{n}是怎么得的？", "为什么会得{n}？和生活习惯有关吗？", "{n}会遗传吗？", "什么原因会导致{n}？",
                                  "{n}是怎么引起的？"],
        ("condition", "diagnosis"): ["{n}要查什么？", "怎么检查是不是{n}？", "抽血能查出{n}吗？", "去医院怎么确诊{n}？"],
        ("condition", "self_care"): ["{n}平时吃什么好？", "{n}不能吃什么？", "{n}在家怎么调理？", "{n}能运动吗？",
                                     "有{n}生活上注意什么？", "{n}饮食上有什么讲究？", "家里人有{n}，怎么照顾？"],
        ("condition", "treatment"): ["{n}怎么治比较好？", "{n}要吃什么药？", "{n}能根治吗？", "{n}需要长期吃药吗？",
                                     "{n}一般怎么治？", "{n}有什么好的治疗方法？"],
        ("condition", "red_flags"): ["{n}什么时候要去急诊？", "{n}出现什么情况很危险？", "{n}加重了怎么办？",
                                     "{n}什么情况下要马上去医院？"],
        ("condition", "prevention"): ["怎样才能不得{n}？", "{n}怎么预防比较好？", "怎么防止{n}复发？", "预防{n}要注意什么？"],
        ("condition", "specialist"): ["{n}挂哪个科？", "{n}看什么科？", "{n}应该找什么医生？"],
        ("symptom", "causes"): ["老是{n}是什么原因？", "{n}是怎么回事？", "为什么总是{n}？", "{n}是什么病引起的？",
                                "{n}是身体出了什么问题？"],
        ("symptom", "self_care"): ["{n}怎么缓解？", "{n}了该怎么办？", "{n}吃什么药好？", "{n}有什么快速缓解的办法？",
                                   "{n}在家能怎么处理？", "{n}难受怎么办？"],
        ("symptom", "red_flags"): ["{n}需要看医生吗？", "{n}什么情况要去医院？", "{n}要紧吗？", "{n}是不是很严重？"],
        ("symptom", "all"): ["我{n}，怎么办？", "这两天{n}，有什么建议？", "{n}要注意什么？"],
        ("medicine", "uses"): ["{n}治什么病？", "{n}是干什么用的？", "{n}是什么药？", "医生给我开了{n}，这是治什么的？"],
        ("medicine", "dosing"): ["{n}一次吃多少？", "{n}一天吃几次？", "{n}饭前吃还是饭后吃？", "{n}最多能吃多少？",
                                 "{n}怎么吃？"],
        ("medicine", "side_effects"): ["{n}有副作用吗？", "吃{n}有什么坏处？", "{n}吃多了伤身体吗？", "{n}会有什么不良反应？"],
        ("medicine", "cautions"): ["哪些人不能吃{n}？", "吃{n}要注意什么？", "{n}有什么禁忌？", "老人能吃{n}吗？"],
        ("medicine", "interactions"): ["吃{n}能喝酒吗？", "{n}能和别的药一起吃吗？", "{n}不能和什么一起吃？",
                                       "吃{n}期间要忌口吗？"],
        ("medicine", "pregnancy"): ["怀孕了能吃{n}吗？", "孕妇可以用{n}吗？", "哺乳期能吃{n}吗？"],
    },
}

# First sentence naming the record; the intent then comes from FOLLOW.
LEAD = {
    "en": {
        "condition": ["I have {n}.", "I was just diagnosed with {n}.", "My {who} has {n}.", "I think I might have {n}.",
                      "My {who} was told they have {n}."],
        "symptom": ["I have {n}.", "My {who} has {n}.", "I've had {n} for a few days.", "I keep getting {n}."],
        "medicine": ["I take {n}.", "I've been prescribed {n}.", "My {who} is on {n}.", "I just started {n}."],
    },
    "zh": {
        "condition": ["我有{n}。", "我刚查出{n}。", "我{who}有{n}。", "我怀疑自己得了{n}。"],
        "symptom": ["我{n}。", "我{who}最近{n}。", "这几天一直{n}。"],
        "medicine": ["我在吃{n}。", "医生给我开了{n}。", "我{who}在吃{n}。"],
    },
}

FOLLOW = {
    "en": {
        ("condition", "overview"): ["What is it, exactly?", "How serious is it?"],
        ("condition", "symptoms"): ["What symptoms should I expect?", "How will it affect me?"],
        ("condition", "causes"): ["What caused it?", "Why did this happen?"],
        ("condition", "self_care"): ["What can I do myself?", "What should I eat?", "What should we watch out for day to day?"],
        ("condition", "treatment"): ["How is it treated?", "Will I need medication?"],
        ("condition", "red_flags"): ["When should we go to hospital?", "What would be an emergency?"],
        ("condition", "prevention"): ["How do we stop it coming back?"],
        ("symptom", "self_care"): ["What can I do?", "What helps?", "How do I make it better?"],
        ("symptom", "causes"): ["Why is this happening?", "What could be causing it?"],
        ("symptom", "red_flags"): ["Should I see a doctor?", "Is it serious?"],
        ("medicine", "side_effects"): ["What side effects can it have?", "Is it bad for the stomach?"],
        ("medicine", "interactions"): ["Can I drink alcohol with it?", "Can I take it with other medicines?"],
        ("medicine", "dosing"): ["How much should I take?", "When is the best time to take it?"],
        ("medicine", "uses"): ["What is it for?", "What does it do?"],
        ("medicine", "pregnancy"): ["Is it safe in pregnancy?"],
    },
    "zh": {
        ("condition", "overview"): ["这是什么病？", "严重吗？"],
        ("condition", "symptoms"): ["会有哪些症状？"],
        ("condition", "causes"): ["是什么原因引起的？"],
        ("condition", "self_care"): ["平时要注意什么？", "吃东西要注意什么？"],
        ("condition", "treatment"): ["要怎么治？", "需要吃药吗？"],
        ("condition", "red_flags"): ["什么情况要去医院？"],
        ("symptom", "self_care"): ["怎么办？", "怎么缓解？"],
        ("symptom", "causes"): ["是什么原因？"],
        ("symptom", "red_flags"): ["要去医院吗？"],
        ("medicine", "side_effects"): ["有什么副作用？"],
        ("medicine", "interactions"): ["能喝酒吗？", "能和别的药一起吃吗？"],
        ("medicine", "dosing"): ["一次吃多少？"],
        ("medicine", "uses"): ["这是治什么的？"],
    },
}

CASE = {
    "en": ["I've been having {s}. What's wrong with me?", "{S}. What could this be?",
           "My {who} has had {s} for a while. What could it be?", "What illness gives you {s}?",
           "Could {s} mean something serious?", "I keep getting {s}. Any idea why?", "Is {s} a sign of something?",
           "For about a week: {s}. Should I worry?"],
    "zh": ["最近{s}，是什么病？", "我{who}{s}，会是什么问题？", "{s}，这是怎么了？", "出现{s}，可能是什么病？",
           "一直{s}，要紧吗？"],
}

WHO = {
    "en": ["mum", "dad", "husband", "wife", "son", "daughter", "grandfather", "grandmother", "partner", "brother",
           "sister", "little boy", "little girl", "elderly father"],
    "zh": ["爸爸", "妈妈", "老公", "老婆", "孩子", "儿子", "女儿", "奶奶", "爷爷", "外婆", "家里老人"],
}

# Emergencies and first aid (the knowledge base's triage items, which have no record name of their own):
# the names users give them, by the item's first question. Items whose topic has a record (abdominal pain,
# fever) or that are not about one topic (driving, antibiotics, online information, self-harm) have none.
TRIAGE_NAMES = {
    "en": {
        "My father has crushing chest pain": ["a heart attack", "heart attack"],
        "How do I recognise a stroke?": ["a stroke", "stroke"],
        "Someone's lips and tongue are swelling": ["a severe allergic reaction", "anaphylaxis"],
        "My child has a high fever and a rash": ["a rash that does not fade", "meningitis"],
        "Someone collapsed and isn't breathing": ["cardiac arrest", "CPR"],
        "Someone is choking": ["choking"],
        "My child swallowed some of my tablets": ["an overdose", "swallowed tablets"],
        "I cut my hand and it's bleeding heavily": ["heavy bleeding", "a deep cut"],
        "I spilled boiling water on my arm": ["a burn", "a scald"],
        "I am 34 weeks pregnant": ["pre-eclampsia"],
        "My friend has had a seizure": ["a seizure", "a fit"],
        "My elderly mother has suddenly become confused": ["sudden confusion", "delirium"],
        "I have sudden pain and swelling in one calf": ["a blood clot in the leg", "DVT"],
        "When should I see a doctor about a mole?": ["a changing mole", "a mole"],
    },
    "zh": {
        "我爸突然胸口压榨样疼痛": ["心梗", "心肌梗死", "心脏病发作"],
        "怎么识别中风？": ["中风", "脑卒中"],
        "吃了花生后嘴唇和舌头肿起来": ["严重过敏", "过敏性休克"],
        "孩子高烧，身上的皮疹": ["压不褪色的皮疹"],
        "有人突然倒地没有呼吸了": ["心跳骤停", "心肺复苏"],
        "有人被食物卡住喉咙": ["噎住", "异物卡喉"],
        "孩子误吃了我的药片": ["吃错药", "药物过量"],
        "手被划了个大口子": ["大出血", "伤口出血不止"],
        "开水烫到手臂了": ["烫伤", "烧伤"],
        "我怀孕34周": ["子痫前期"],
        "朋友抽搐了好几分钟": ["癫痫发作", "抽搐"],
        "家里老人突然变得糊涂了": ["老人突然糊涂", "谵妄"],
        "坐了长途飞机后一侧小腿突然肿痛": ["下肢血栓", "深静脉血栓"],
    },
}

TRIAGE = {
    "en": ["What are the signs of {n}?", "How do I recognise {n}?", "What is the first aid for {n}?",
           "What should I do about {n}?", "How do you deal with {n}?", "My {who} may have {n}. What should I do?",
           "Is {n} an emergency?", "What to do in case of {n}?", "How do I know if it's {n}?"],
    "zh": ["{n}有什么表现？", "{n}怎么急救？", "遇到{n}该怎么办？", "怎么判断是不是{n}？", "{n}第一步该做什么？",
           "家里人{n}了怎么办？", "{n}要马上去医院吗？"],
}

LAY_Q = {
    "en": ["{S1} and {s2}. What's going on?", "{S1}, {s2} and {s3}. What could this be?",
           "Lately {s1} and {s2}. What might be wrong with me?", "For a few days now {s1}. Also {s2}. Should I worry?",
           "{S1}. On top of that {s2}. Any idea what it is?", "Why is it that {s1} and {s2}?",
           "{S1} and {s2}. What is it, and what can I do about it?", "Help: {s1}, and {s2}. What does that mean?",
           "Since last week {s1} and {s2}. Do I need a doctor?", "{S1}. {S2}. What's happening to me?"],
    "zh": ["最近{s1}，还{s2}，是怎么回事？", "我{s1}，{s2}，是什么病？", "这几天{s1}，{s2}，要紧吗？",
           "{s1}，{s2}，这是什么原因？", "{s1}，而且{s2}，该怎么办？", "一段时间以来{s1}，{s2}，需要看医生吗？",
           "我{who}{s1}，而且{s2}，会是什么问题？", "{s1}，又{s2}，可能是什么病？"],
}

THEY_Q = {
    "en": ["My {who} {v1} and {v2}. What could it be?", "Lately my {who} {v1}, and {v2}. Should we see a doctor?",
           "My {who} {v1}, and also {v2}. What's wrong?", "I'm worried: my {who} {v1} and {v2}. Is it serious?",
           "Our {who} {v1} and {v2}. What might cause that?"],
}

GUESS_Q = {
    "en": ["{S1} and {s2}. Could it be {g}?", "{S1}. Do you think it's {g}?", "{S1} and {s2}. Is this {g}?",
           "My {who} {v1} and {v2}. Could it be {g}?", "{S1}, and {s2}. Might that be {g}?",
           "{S1}. Could this be {g}, and what should I do?"],
    "zh": ["{s1}，{s2}，是不是{g}？", "我{s1}，会不会是{g}？", "最近{s1}，{s2}，是{g}吗？",
           "我{who}{s1}，还{s2}，是不是{g}了？", "{s1}，{s2}，难道是{g}？"],
}

GUESS_ADJ_Q = {  # "{g}" an adjective ("anaemic", "diabetic")
    "en": ["{S1} and {s2}. Could I be {g}?", "{S1}. Am I {g}?", "{S1}, and {s2}. Do you think I'm {g}?",
           "My {who} {v1}. Could they be {g}?"],
}

# Context around a named question (routing_data.context_samples): users write their situation, ages, doses and
# durations, a second question, or a remark. Numbers matter: without them in context, a question with "39 C" or
# "72" pulled the model towards the code-lookup answers ("A03 is ..."). "{n}" the name, "{a}" an age, "{d}" a
# small count, "{who}" a family member.
CONTEXT_PRE = {
    "en": {
        "condition": ["My doctor says I have {n}.", "I was diagnosed with {n} {d} months ago.", "I'm {a} and I have {n}.",
                      "My {who} is {a} and has had {n} for years.", "They told me at the clinic it's {n}.",
                      "I've read a lot about {n} online and I'm confused.", "My {who} was just told it's {n}."],
        "symptom": ["I've had {n} for {d} days now.", "I'm {a}.", "My {who} is {a} and has {n}.",
                    "It started {d} days ago.", "I've had {n} on and off for {d} weeks."],
        "medicine": ["I started {n} {d} days ago.", "My doctor put me on {n}.", "I'm {a} and I take {n} every day.",
                     "My {who} is {a} and was given {n}.", "I've been taking {n} for {d} weeks.",
                     "The pharmacy gave me {n}."],
        "any": ["Quick question.", "Sorry if this is a silly question.", "I'm {a}.", "My {who} is {a}.",
                "We live far from a hospital.", "I don't want to waste the doctor's time."],
    },
    "zh": {
        "condition": ["医生说我是{n}，", "我{a}岁，查出{n}，", "我{who}{a}岁了，有{n}好几年了，", "体检查出{n}，",
                      "我{who}刚被诊断为{n}，", "{n}{d}个月了，"],
        "symptom": ["我{a}岁，", "{n}{d}天了，", "我{who}{a}岁，{n}，", "这{d}天一直{n}，"],
        "medicine": ["我吃{n}{d}天了，", "医生给我开了{n}，", "我{who}{a}岁了，每天吃{n}，", "刚开始吃{n}，",
                     "药店给我拿了{n}，"],
        "any": ["问一下，", "我{a}岁，", "我{who}{a}岁了，", "不好意思打扰一下，"],
    },
}

CONTEXT_POST = {
    "en": ["He says it's nothing.", "She doesn't want to bother the doctor.", "I'm a bit worried.",
           "Is that normal?", "Any advice would help.", "We're trying to avoid the hospital if we can.",
           "I'd rather not take more tablets than I need.", "Thanks in advance."],
    "zh": ["他说没事。", "她不想去医院。", "有点担心。", "正常吗？", "麻烦告诉我一下。", "谢谢医生。", "能不吃药吗？"],
}
