"""中文模板：把 angelcli/tiny/kb 中的中文记录变成对话轮次。

与英文模板（corpus_templates_en.py）的结构相同：每个生成函数接收一条记录和一个 `random.Random`，
返回 [(用户, 助手), ...]。多样性来自问法、开头语、列表形式（项目符号、编号、顿号串联）和结尾提示的独立选择；
医学内容只来自记录本身。
"""

from __future__ import annotations

import random

from angelcli.tiny.corpus_templates_en import pick_items


def join_zh(items: list[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return "、".join(items[:-1]) + "和" + items[-1]


def join_or(items: list[str]) -> str:
    """危险信号之间是“或”的关系，而且条目本身常含“和”“或”，所以用“，或”连接。"""
    return "，或".join(items)


def render_list(rng: random.Random, items: list[str]) -> str:
    style = rng.randrange(4)
    if style == 0:
        return "\n" + "\n".join(f"- {i}" for i in items)
    if style == 1:
        return "\n" + "\n".join(f"{k}. {i}" for k, i in enumerate(items, 1))
    if style == 2:
        return join_zh(items) + "。"
    return "；".join(items) + "。"


def typed_name(rng: random.Random, rec: dict) -> str:
    if rec.get("aka") and rng.random() < 0.35:
        return rng.choice(rec["aka"])
    return rec["name"]


CLOSERS = ["", "", "如果不确定，可以咨询医生或药师。", "以上为一般健康知识，具体情况请以医生面诊为准。",
           "如果症状严重、突然或让你担心，请及时就医。", "医生可以根据你的具体情况给出建议。",
           "如出现呼吸困难、胸痛等严重症状，请立即拨打120。"]


def _closer(rng: random.Random) -> str:
    c = rng.choice(CLOSERS)
    return f"\n\n{c}" if c else ""


# ---- 疾病 -------------------------------------------------------------------------------------------

COND_Q = {
    "overview": ["{n}是什么病？", "什么是{n}？", "能简单介绍一下{n}吗？", "医生说我得了{n}，这是什么意思？", "{n}是怎么回事？", "请通俗地解释一下{n}。"],
    "symptoms": ["{n}有哪些症状？", "{n}的常见表现是什么？", "怎么知道自己是不是得了{n}？", "{n}会有什么感觉？", "得了{n}身体会出现哪些信号？"],
    "causes": ["{n}是什么原因引起的？", "哪些人容易得{n}？", "{n}的危险因素有哪些？", "为什么会得{n}？"],
    "diagnosis": ["{n}怎么诊断？", "查{n}要做哪些检查？", "医生怎么确诊{n}？"],
    "self_care": ["{n}在家里怎么护理？", "得了{n}自己能做些什么？", "{n}患者生活上要注意什么？", "{n}有什么自我调理的方法？"],
    "treatment": ["{n}怎么治疗？", "{n}能治好吗？需要吃什么药？", "{n}的治疗方法有哪些？", "医生一般怎么治{n}？"],
    "red_flags": ["{n}什么情况下要去医院？", "{n}出现哪些症状需要急诊？", "{n}有哪些危险信号？", "得了{n}什么时候必须看医生？"],
    "prevention": ["怎么预防{n}？", "{n}能预防吗？", "如何降低得{n}的风险？"],
    "specialist": ["{n}应该挂什么科？", "看{n}去哪个科室？", "{n}找哪个科的医生？"],
}

COND_FOLLOW = {
    "overview": ["这到底是什么病？"], "symptoms": ["有哪些症状？", "会有什么表现？"],
    "causes": ["是什么原因引起的？", "我是不是高危人群？"], "diagnosis": ["要做什么检查？", "怎么确诊？"],
    "self_care": ["平时在家要注意什么？", "我自己能做些什么？"], "treatment": ["怎么治疗？", "需要吃药吗？"],
    "red_flags": ["什么情况要马上去医院？", "什么时候需要担心？"], "prevention": ["能预防吗？", "怎么避免？"],
    "specialist": ["该挂哪个科？"],
}

_OPEN = {
    "symptoms": ["{n}的常见症状包括：", "{n}患者常出现：", "典型表现有：", "{n}可能引起："],
    "causes": ["{n}的原因和危险因素包括：", "主要危险因素有：", "以下因素与{n}有关："],
    "self_care": ["可以这样做：", "日常护理要点：", "{n}的自我管理方法：", "在家可以："],
    "red_flags": ["出现以下情况请及时就医或急诊：", "{n}的危险信号包括：", "以下情况需要尽快看医生："],
    "prevention": ["预防{n}可以：", "降低风险的方法：", "预防要点："],
}


def condition_answer(rng: random.Random, c: dict, intent: str) -> str:
    n = c["name"]
    if intent == "overview":
        out = c["summary"]
        sym = [s for s in c["symptoms"] if "无症状" not in s and "没有" not in s]
        if sym and rng.random() < 0.6:
            out += f"常见症状有{join_zh(sym[:3])}。"
        if rng.random() < 0.4:
            out += f"一般在{c['specialist']}就诊。"
        return out + _closer(rng)
    if intent in ("symptoms", "causes", "self_care", "prevention"):
        out = rng.choice(_OPEN[intent]).format(n=n) + render_list(rng, pick_items(rng, c[intent]))
        if intent in ("symptoms", "self_care") and rng.random() < 0.6:
            out += f"\n\n如果出现{join_or(c['red_flags'][:2])}，请及时就医。"
        return out + _closer(rng)
    if intent == "red_flags":
        out = rng.choice(_OPEN[intent]).format(n=n) + render_list(rng, c["red_flags"])
        tail = rng.choice(["\n\n症状突然或严重时，请立即拨打120或去最近的急诊。",
                           f"\n\n症状较轻但持续不好转时，建议到{c['specialist']}就诊。",
                           f"\n\n紧急情况请拨打120；其他情况可预约{c['specialist']}。"])
        return out + tail
    if intent == "diagnosis":
        return c["diagnosis"] + rng.choice(["", f"如有担心，可以到{c['specialist']}咨询检查。", "具体做哪些检查由医生决定。"]) + _closer(rng)
    if intent == "treatment":
        tail = rng.choice([f"治疗方案因人而异，请与{c['specialist']}医生商量。", "处方药请勿自行开始或停用。",
                           f"自我管理同样重要：{join_zh(c['self_care'][:2])}。"])
        return c["treatment"] + tail + _closer(rng)
    if intent == "specialist":
        return f"{n}一般看{c['specialist']}。" + c["summary"] + rng.choice(["", "就诊时可以带上症状记录和正在服用的药物清单。"])
    raise ValueError(intent)


def condition_single(rng: random.Random, c: dict, intent: str) -> list[tuple[str, str]]:
    return [(rng.choice(COND_Q[intent]).format(n=typed_name(rng, c)), condition_answer(rng, c, intent))]


def condition_multi(rng: random.Random, c: dict) -> list[tuple[str, str]]:
    intents = rng.sample(list(COND_Q), rng.randint(2, 4))
    turns = [(rng.choice(COND_Q[intents[0]]).format(n=typed_name(rng, c)), condition_answer(rng, c, intents[0]))]
    for it in intents[1:]:
        turns.append((rng.choice(COND_FOLLOW[it]), condition_answer(rng, c, it)))
    return turns


_CASE_Q = ["我最近有{s}，可能是什么问题？", "这几天出现{s}，需要担心吗？", "我{who}有{s}，会是什么病？",
           "{s}是怎么回事？", "出现{s}，需要去医院吗？"]
_WHO = ["爸爸", "妈妈", "老公", "老婆", "儿子", "女儿", "奶奶", "爷爷", "朋友"]


def case_symptoms(rng: random.Random, c: dict) -> list[str] | None:
    """患者可能描述的两到三个症状（记录中少于两个时返回 None）。"""
    sym = [s for s in c["symptoms"] if "无症状" not in s and "没有" not in s]
    if len(sym) < 2:
        return None
    return rng.sample(sym, min(len(sym), rng.randint(2, 3)))


def condition_case(rng: random.Random, c: dict) -> list[tuple[str, str]] | None:
    chosen = case_symptoms(rng, c)
    if chosen is None:
        return None
    q = rng.choice(_CASE_Q).format(s=join_zh(chosen), who=rng.choice(_WHO))
    a = (rng.choice(["引起这些症状的原因有很多，我无法替你诊断，", "不经过检查很难确定，", "这些症状需要医生面诊评估，"])
         + f"其中一种可能是{c['name']}。{c['summary']}\n\n"
         + f"建议到{c['specialist']}就诊评估。" + rng.choice(["", c["diagnosis"]])
         + f"如果出现{join_or(c['red_flags'][:2])}，请立即就医。")
    return [(q, a)]


# ---- 症状 -------------------------------------------------------------------------------------------

SYM_Q = {
    "causes": ["{n}是什么原因？", "为什么会{n}？", "经常{n}是怎么回事？", "引起{n}的原因有哪些？"],
    "self_care": ["{n}在家怎么缓解？", "{n}怎么办？", "{n}有什么缓解的方法？"],
    "red_flags": ["{n}什么情况要看医生？", "{n}什么时候算严重？", "{n}出现哪些情况要急诊？"],
    "all": ["我{n}了，该怎么办？", "从昨天开始{n}，有什么建议？", "给我讲讲{n}。"],
}


def symptom_answer(rng: random.Random, s: dict, intent: str) -> str:
    n = s["name"]
    if intent == "causes":
        return s["summary"] + "\n\n" + rng.choice(["可能的原因包括：", "常见原因有：", f"引起{n}的原因："]) + render_list(rng, pick_items(rng, s["causes"])) + _closer(rng)
    if intent == "self_care":
        return (rng.choice(["可以试试：", "以下方法通常有帮助：", "自我护理："]) + render_list(rng, pick_items(rng, s["self_care"]))
                + f"\n\n如果出现{join_or(s['red_flags'][:2])}，请及时就医。" + _closer(rng))
    if intent == "red_flags":
        return (rng.choice(["出现以下情况请尽快就医，严重时立即急诊：", f"{n}的危险信号：", "以下情况需要及时检查："])
                + render_list(rng, s["red_flags"]) + "\n\n" + rng.choice(["症状突然或严重时", "紧急情况下"]) + "，请立即拨打120。")
    if intent == "all":
        return (s["summary"] + "\n\n你可以：" + render_list(rng, pick_items(rng, s["self_care"]))
                + "\n\n出现以下情况请看医生或急诊：" + render_list(rng, s["red_flags"]))
    raise ValueError(intent)


def symptom_single(rng: random.Random, s: dict, intent: str) -> list[tuple[str, str]]:
    return [(rng.choice(SYM_Q[intent]).format(n=typed_name(rng, s)), symptom_answer(rng, s, intent))]


# ---- 药物 -------------------------------------------------------------------------------------------

MED_Q = {
    "uses": ["{n}是治什么的？", "{n}有什么作用？", "医生为什么给我开{n}？", "{n}是什么药？"],
    "dosing": ["{n}怎么吃？", "{n}一次吃多少？", "{n}的常用剂量是多少？", "{n}一天能吃几次？"],
    "side_effects": ["{n}有什么副作用？", "吃{n}会有不良反应吗？", "{n}的副作用大吗？"],
    "cautions": ["吃{n}要注意什么？", "哪些人不能吃{n}？", "{n}有什么禁忌？"],
    "interactions": ["{n}能和别的药一起吃吗？", "吃{n}期间要避免什么？", "{n}和哪些药有相互作用？"],
    "pregnancy": ["孕妇能吃{n}吗？", "怀孕期间可以用{n}吗？", "哺乳期能吃{n}吗？"],
}
MED_FOLLOW = {
    "uses": ["这个药是治什么的？"], "dosing": ["怎么吃？", "一次吃多少？"], "side_effects": ["有副作用吗？"],
    "cautions": ["有什么要注意的？", "哪些人不能吃？"], "interactions": ["和其他药能一起吃吗？"], "pregnancy": ["孕妇能用吗？", "哺乳期呢？"],
}
LABEL = ["请以药品说明书或医嘱为准。", "具体剂量请遵医嘱，不确定时可以问药师。", "适合你的剂量请由医生或药师确认。"]


def medicine_answer(rng: random.Random, m: dict, intent: str) -> str:
    n = m["name"]
    if intent == "uses":
        return f"{n}属于{m['klass']}。" + rng.choice(["主要用于：", "常见用途：", "适用于："]) + render_list(rng, pick_items(rng, m["uses"], lo=2)) + _closer(rng)
    if intent == "dosing":
        return m["dosing"] + rng.choice(LABEL) + rng.choice(["", "不要超过推荐剂量。"])
    if intent == "side_effects":
        return (rng.choice([f"{n}常见的副作用有：", "可能的副作用：", f"{n}可能引起："]) + render_list(rng, m["side_effects"])
                + "\n\n" + rng.choice(["需要注意：", "另外："]) + "；".join(m["cautions"][:2]) + "。" + _closer(rng))
    if intent == "cautions":
        return rng.choice([f"服用{n}前需要了解：", "注意事项：", "以下情况要小心："]) + render_list(rng, m["cautions"]) + "\n\n" + rng.choice(["如有疑问请咨询医生或药师。", "请阅读药品说明书，遵医嘱用药。"])
    if intent == "interactions":
        return (rng.choice([f"{n}可能与以下药物或物质相互作用：", "需要注意的相互作用：", "已知的相互作用包括："])
                + render_list(rng, m["interactions"]) + "\n\n请把正在使用的所有药物和保健品告诉医生或药师。")
    if intent == "pregnancy":
        return m["pregnancy"] + rng.choice(["用药前请先咨询医生或药师。", "孕期用药请与产科医生商量。"])
    raise ValueError(intent)


def medicine_single(rng: random.Random, m: dict, intent: str) -> list[tuple[str, str]]:
    return [(rng.choice(MED_Q[intent]).format(n=typed_name(rng, m)), medicine_answer(rng, m, intent))]


def medicine_multi(rng: random.Random, m: dict) -> list[tuple[str, str]]:
    intents = rng.sample(list(MED_Q), rng.randint(2, 3))
    turns = [(rng.choice(MED_Q[intents[0]]).format(n=typed_name(rng, m)), medicine_answer(rng, m, intents[0]))]
    for it in intents[1:]:
        turns.append((rng.choice(MED_FOLLOW[it]), medicine_answer(rng, m, it)))
    return turns


# ---- 分诊、科普、对话 ------------------------------------------------------------------------------------

_PREFIX = ["", "", "", "请问，", "急！", "医生你好，", "你好，"]


def triage_samples(rng: random.Random, t: dict) -> list[list[tuple[str, str]]]:
    return [[(rng.choice(_PREFIX) + q, t["a"])] for q in t["q"]]


def passage_samples(rng: random.Random, p: dict) -> list[list[tuple[str, str]]]:
    out = [[(q, p["text"])] for q in p["q"]]
    first_two = "。".join(p["text"].split("。")[:2]) + "。"
    out.append([(rng.choice(["简单说说：", "用一两句话回答：", "简要回答："]) + p["q"][0], first_two)])
    return out


def dialogue_samples(d: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    return [list(d), [d[0]]]
