"""Write the bundled demo corpus (src/grasp_lora/data/demo/*.jsonl).

Written for this project, not copied from a dataset: short paragraphs about made-up people, in English,
Arabic and Chinese, with extractive questions whose answers are spans of the paragraph, and short news
items with a one-sentence summary. Easy enough for a 135M model to learn in minutes on a CPU.

    python scripts/make_demo_corpus.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "grasp_lora" / "data" / "demo"
SIZES = {"qa": {"en": 320, "ar": 240, "zh": 240}, "summarization": {"en": 80, "ar": 80, "zh": 80}}

EN = {
    "names": [("Amira", "f"), ("Omar", "m"), ("Lina", "f"), ("Karim", "m"), ("Sara", "f"), ("Yusuf", "m"),
              ("Mei", "f"), ("Wei", "m"), ("Anna", "f"), ("Tom", "m"), ("Maria", "f"), ("David", "m"),
              ("Nora", "f"), ("Ali", "m"), ("Hana", "f"), ("Sami", "m")],
    "cities": ["Cairo", "Beijing", "London", "Paris", "Dubai", "Shanghai", "Tokyo", "Madrid", "Rome", "Berlin",
               "Amman", "Tunis"],
    "jobs": [("a", "doctor"), ("a", "teacher"), ("a", "baker"), ("a", "pilot"), ("an", "engineer"), ("a", "farmer"),
             ("a", "nurse"), ("a", "painter"), ("a", "driver"), ("a", "chef")],
    "colors": ["red", "blue", "green", "yellow", "white", "black"],
    "objects": ["car", "bicycle", "bag", "umbrella"],
    "animals": ["cats", "dogs", "birds"],
}
AR = {
    "names": [("عمر", "m"), ("كريم", "m"), ("يوسف", "m"), ("سامي", "m"), ("علي", "m"), ("خالد", "m"), ("حسن", "m"),
              ("طارق", "m"), ("أميرة", "f"), ("لينا", "f"), ("سارة", "f"), ("ليلى", "f"), ("هناء", "f"), ("نور", "f"),
              ("مريم", "f"), ("فاطمة", "f")],
    "cities": ["القاهرة", "دبي", "عمّان", "تونس", "بيروت", "الرباط", "بغداد", "الرياض", "لندن", "باريس"],
    "jobs": [("طبيب", "طبيبة"), ("معلم", "معلمة"), ("خباز", "خبازة"), ("مهندس", "مهندسة"), ("مزارع", "مزارعة"),
             ("ممرض", "ممرضة"), ("رسام", "رسامة"), ("طيار", "طيارة"), ("سائق", "سائقة"), ("طباخ", "طباخة")],
    # all objects are feminine nouns, so the colours take their feminine forms
    "colors": ["حمراء", "زرقاء", "خضراء", "صفراء", "بيضاء", "سوداء"],
    "objects": ["سيارة", "دراجة", "حقيبة", "مظلة"],
    # plural (3-9 takes the plural), and the singular accusative that follows كم
    "animals": [("قطط", "قطة"), ("كلاب", "كلبًا"), ("عصافير", "عصفورًا")],
}
ZH = {
    "names": [("李明", "m"), ("王伟", "m"), ("张强", "m"), ("刘洋", "m"), ("陈杰", "m"), ("赵磊", "m"), ("王芳", "f"),
              ("李娜", "f"), ("张丽", "f"), ("刘静", "f"), ("陈敏", "f"), ("杨雪", "f")],
    "cities": ["北京", "上海", "广州", "深圳", "成都", "杭州", "西安", "南京", "武汉", "重庆"],
    "jobs": ["医生", "老师", "面包师", "工程师", "农民", "护士", "画家", "飞行员", "司机", "厨师"],
    "colors": ["红色", "蓝色", "绿色", "黄色", "白色", "黑色"],
    "objects": [("自行车", "辆"), ("汽车", "辆"), ("包", "个"), ("雨伞", "把")],
    "animals": ["猫", "狗", "鸟"],
}
QUESTION_KINDS = ("city", "job", "count", "color")


def person(rng: random.Random, vocab: dict) -> dict:
    (name, gender), (friend, fgender) = rng.sample(vocab["names"], 2)
    return {"name": name, "gender": gender, "friend": friend, "fgender": fgender,
            "city": rng.choice(vocab["cities"]), "job": rng.choice(vocab["jobs"]),
            "friend_job": rng.choice(vocab["jobs"]), "color": rng.choice(vocab["colors"]),
            "object": rng.choice(vocab["objects"]), "animal": rng.choice(vocab["animals"]), "n": rng.randint(3, 9),
            "with_friend": rng.random() < 0.5, "order": rng.randint(0, 1)}


def qa_en(p: dict, kind: str) -> dict:
    he, his = ("He", "his") if p["gender"] == "m" else ("She", "her")
    art, job = p["job"]
    fart, fjob = p["friend_job"]
    s1 = f"{p['name']} is {art} {job} who lives in {p['city']}."
    s2 = f"{he} has {p['n']} {p['animal']} and a {p['color']} {p['object']}."
    s3 = f"{his.capitalize()} friend {p['friend']} is {fart} {fjob}." if p["with_friend"] else ""
    context = " ".join(s for s in ([s1, s2, s3] if p["order"] == 0 else [s2.replace(he, p["name"], 1), s1.replace(p["name"], he, 1), s3]) if s)
    q, a = {
        "city": (f"Where does {p['name']} live?", p["city"]),
        "job": (f"What is {p['name']}'s job?", job),
        "count": (f"How many {p['animal']} does {p['name']} have?", str(p["n"])),
        "color": (f"What color is {p['name']}'s {p['object']}?", p["color"]),
    }[kind]
    return {"context": context, "question": q, "answers": [a]}


def qa_ar(p: dict, kind: str) -> dict:
    m = p["gender"] == "m"
    job = p["job"][0 if m else 1]
    plural, singular = p["animal"]
    lives, pronoun, has = ("يعيش", "وهو", "لديه") if m else ("تعيش", "وهي", "لديها")
    s1 = f"{lives} {p['name']} في مدينة {p['city']}، {pronoun} {job}."
    s2 = f"{has} {p['n']} {plural} و{p['object']} {p['color']}."
    if p["order"] == 1:
        s2 = f"لدى {p['name']} {p['n']} {plural} و{p['object']} {p['color']}."
        s1 = f"{lives} في مدينة {p['city']}، {pronoun} {job}."
    fm = p["fgender"] == "m"
    s3 = f"{'صديقه' if m else 'صديقتها'} {p['friend']} {p['friend_job'][0 if fm else 1]}." if p["with_friend"] else ""
    context = " ".join(s for s in ([s1, s2, s3] if p["order"] == 0 else [s2, s1, s3]) if s)
    q, a = {
        "city": (f"أين {lives} {p['name']}؟", p["city"]),
        "job": (f"ما هي مهنة {p['name']}؟", job),
        "count": (f"كم {singular} لدى {p['name']}؟", str(p["n"])),
        "color": (f"ما لون {p['object']} {p['name']}؟", p["color"]),
    }[kind]
    return {"context": context, "question": q, "answers": [a]}


def qa_zh(p: dict, kind: str) -> dict:
    he = "他" if p["gender"] == "m" else "她"
    obj, measure = p["object"]
    s1 = f"{p['name']}住在{p['city']}，是一名{p['job']}。"
    s2 = f"{he}养了{p['n']}只{p['animal']}，还有一{measure}{p['color']}的{obj}。"
    if p["order"] == 1:
        s2 = f"{p['name']}养了{p['n']}只{p['animal']}，还有一{measure}{p['color']}的{obj}。"
        s1 = f"{he}住在{p['city']}，是一名{p['job']}。"
    s3 = f"{he}的朋友{p['friend']}是一名{p['friend_job']}。" if p["with_friend"] else ""
    context = "".join([s1, s2, s3] if p["order"] == 0 else [s2, s1, s3])
    q, a = {
        "city": (f"{p['name']}住在哪里？", p["city"]),
        "job": (f"{p['name']}的职业是什么？", p["job"]),
        "count": (f"{p['name']}养了几只{p['animal']}？", str(p["n"])),
        "color": (f"{p['name']}的{obj}是什么颜色？", p["color"]),
    }[kind]
    return {"context": context, "question": q, "answers": [a]}


SHOPS = {
    "en": [("bakery", "bread and cakes"), ("cafe", "coffee and tea"), ("bookshop", "books and pens"),
           ("flower shop", "roses and tulips"), ("restaurant", "soup and rice")],
    "ar": [("مخبزًا", "الخبز والكعك"), ("مقهى", "القهوة والشاي"), ("متجرًا للكتب", "الكتب والأقلام"),
           ("متجرًا للزهور", "الورود والزنابق"), ("مطعمًا", "الحساء والأرز")],
    "zh": [("面包店", "面包和蛋糕"), ("咖啡馆", "咖啡和茶"), ("书店", "书和笔"), ("花店", "玫瑰和郁金香"),
           ("餐馆", "汤和米饭")],
}
DAYS = {"en": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
        "ar": ["الاثنين", "الثلاثاء", "الأربعاء", "الخميس", "الجمعة", "السبت", "الأحد"],
        "zh": ["星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期天"]}


def summary_item(rng: random.Random, lang: str) -> dict:
    shop, goods = rng.choice(SHOPS[lang])
    day = rng.choice(DAYS[lang])
    visitors = rng.randint(20, 90)
    if lang == "en":
        (name, g), city, (art, job) = rng.choice(EN["names"]), rng.choice(EN["cities"]), rng.choice(EN["jobs"])
        he = "he" if g == "m" else "she"
        article = (f"{name}, {art} {job} from {city}, opened a new {shop} on {day}. The {shop} sells {goods}. "
                   f"About {visitors} neighbours came on the first day, and {name} said {he} was very happy. "
                   f"The {shop} will be open every day except {rng.choice(DAYS[lang])}.")
        summary = f"{name} opened a new {shop} in {city}."
        title = f"New {shop} in {city}"
    elif lang == "ar":
        name, city = rng.choice([n for n, g in AR["names"] if g == "m"]), rng.choice(AR["cities"])
        job = rng.choice(AR["jobs"])[0]
        article = (f"افتتح {name}، وهو {job} من {city}، {shop} جديدًا يوم {day}. ويبيع المكان {goods}. "
                   f"وزار المكان نحو {visitors} من الجيران في اليوم الأول، وقال {name} إنه سعيد جدًا. "
                   f"وسيفتح المكان كل يوم ما عدا يوم {rng.choice(DAYS[lang])}.")
        summary = f"افتتح {name} {shop} جديدًا في {city}."
        title = f"افتتاح مكان جديد في {city}"
    else:
        name, city, job = rng.choice(ZH["names"])[0], rng.choice(ZH["cities"]), rng.choice(ZH["jobs"])
        article = (f"{city}的{job}{name}于{day}开了一家新的{shop}。这家{shop}出售{goods}。"
                   f"开业第一天，大约{visitors}位邻居前来光顾，{name}表示非常高兴。"
                   f"这家{shop}除{rng.choice(DAYS[lang])}外每天营业。")
        summary = f"{name}在{city}开了一家新的{shop}。"
        title = f"{city}新开一家{shop}"
    return {"title": title, "article": article, "summary": summary}


def make(seed: int = 2026) -> dict[str, list[dict]]:
    makers = {"en": (qa_en, EN), "ar": (qa_ar, AR), "zh": (qa_zh, ZH)}
    files: dict[str, list[dict]] = {}
    for lang, n in SIZES["qa"].items():
        rng, (make_qa, vocab) = random.Random(f"{seed}-qa-{lang}"), makers[lang]
        rows, seen = [], set()
        while len(rows) < n:
            item = make_qa(person(rng, vocab), QUESTION_KINDS[len(rows) % len(QUESTION_KINDS)])
            key = (item["context"], item["question"])
            if key in seen:
                continue
            seen.add(key)
            assert item["answers"][0] in item["context"], item
            rows.append({"id": f"demo-qa-{lang}-{len(rows):04d}", **item})
        files[f"qa_{lang}.jsonl"] = rows
    for lang, n in SIZES["summarization"].items():
        rng = random.Random(f"{seed}-sum-{lang}")
        files[f"summarization_{lang}.jsonl"] = [{"id": f"demo-sum-{lang}-{i:04d}", **summary_item(rng, lang)}
                                                for i in range(n)]
    return files


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for name, rows in make().items():
        (OUT / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"{OUT / name}: {len(rows)} records")
