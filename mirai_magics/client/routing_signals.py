"""The local classifier's built-in signals, English and Russian, compiled once on first use.

A signal is a weighted pattern for a profile with the reason it gives; prompts are matched
case-folded, Russian by stems (``\\bпроанализ`` matches every inflected form). Besides the
table, ``domain`` scores programming and data vocabulary: a few such words alone lean heavy
(and keep a request off fast); with a request to do something ("how do I", "помоги",
"посчитай", "merge", …) they make it a coding or analysis task.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class Signal:
    """A pattern that speaks for a profile, with its weight and the reason it gives."""

    profile: str
    reason: str
    weight: float
    pattern: re.Pattern[str]
    blocks_fast: bool = False  # code or analysis: never answered by fast
    reads_samples: bool = False  # also inside «quoted» samples (code is code wherever it is)


def _signal(
    profile: str, reason: str, weight: float, *parts: str, blocks_fast=False, reads_samples=False
) -> Signal:
    pattern = re.compile("|".join(parts), re.M)
    return Signal(profile, reason, weight, pattern, blocks_fast, reads_samples)


def without_samples(folded: str) -> str:
    """The request around its «quoted» samples: what is asked, not the text it is about."""
    return _QUOTED.sub(" ", folded)


_EN_MAKE = (
    r"\b(?:write|implement|generate|create|build|code up|give me|make|port|convert|rewrite|"
    r"translate)\b"
)
_EN_CODE = (
    r"(?:functions?|class(?:es)?|scripts?|methods?|decorators?|quer(?:y|ies)|regex(?:es)?|"
    r"regular expressions?|tests?|test suite|parsers?|programs?|code|snippets?|modules?|"
    r"endpoints?|dataclass(?:es)?|pipelines?|loops?|lambdas?|one-liners?|apps?|dashboards?|"
    r"bots?|clis?)\b"
)
_RU_MAKE = (
    r"\b(?:напиши|напишите|написать|реализуй|сгенерируй|создай|набросай|сделай|накидай|"
    r"перепиши|переведи|преобразуй)\b"
)
_RU_CODE = (
    r"(?:функци|класс|скрипт|код|sql|запрос|регулярк|тест|парсер|программ|метод|декоратор|"
    r"пайплайн|цикл)\w*"
)
_NEAR = r"(?:\W+\w+){0,4}?\W+"  # up to four words in between


# fmt: off
@lru_cache(maxsize=1)
def builtin_signals() -> tuple[Signal, ...]:
    """The built-in signals (compiled on first use; prompts are matched case-folded)."""
    h, f, m = "heavy", "fast", "main"
    return (
        _signal(h, "code generation", 3,
                _EN_MAKE + _NEAR + _EN_CODE, _RU_MAKE + _NEAR + _RU_CODE,
                r"\b(?:a|an) (?:python |small |simple )?(?:function|script|class) "
                r"(?:that|which|to)\b",
                r"\b(?:функци|скрипт|класс)\w*,? (?:котор|чтобы)", blocks_fast=True),
        _signal(h, "refactoring", 3,
                r"\brefactor", r"\b(?:от)?рефактор", r"\bvectori[sz]", r"\bвекториз",
                r"\blist comprehension", r"\bclean up (?:the |this |my )?code",
                r"\bупрост\w*" + _NEAR + r"(?:код|функци)", blocks_fast=True),
        _signal(h, "debugging", 3,
                r"\bdebug", r"\bотлад", r"\btraceback", r"\bstack ?trace", r"\bexception\b",
                r"\b\w+(?:error|exception)\b", r"\bbugs?\b", r"\bбаг", r"\bпадает\b",
                r"\bвылета", r"\bзацикл", r"\bне работает", r"\bdoesn'?t work", r"\bnot working",
                r"\b(?:найди|исправь) ошибк", r"\bчто не так\b", r"\bwhat'?s wrong\b",
                r"\bошибк\w* в (?:мо\w+ )?(?:код|реализац|функци|скрипт|цикл)",
                r"\bfix (?:the |this |my )?(?:bug|error|code|function)",
                r"\bmemory leak", r"\bутечк\w* памяти",
                r"\bwhy is (?:memory|it|my \w+) (?:growing|slow|failing|leaking|hanging)",
                blocks_fast=True),
        _signal(h, "optimisation", 3,
                r"\boptimi[sz]", r"\bоптимиз", r"\bspeed (?:it |this )?up\b", r"\bускор",
                r"\bfaster (?:approach|way|version)", r"\btoo slow\b", r"\bмедленн",
                r"\btakes \d+ (?:seconds|minutes|hours)", r"\btime complexity",
                r"\bсложност\w* (?:алгоритм|по времени)", r"\bbig[- ]o\b", blocks_fast=True),
        _signal(h, "data analysis", 3,
                r"\banaly[sz]", r"\bпроанализ", r"\bанализ", r"\bcorrelat", r"\bкорреляц",
                r"\bregression", r"\bрегресс", r"\boutliers?\b", r"\bвыброс", r"\bdistribution",
                r"\bраспределени", r"\bдоверительн", r"\bconfidence interval", r"\bsignifican",
                r"\bзначим", r"\bsample size", r"\bразмер\w* выборки", r"\bclusteri",
                r"\bкластериз", r"\bforecast", r"\bпрогноз", r"\bchurn\b", r"\bотток",
                r"\bunderperform", r"\boverfit", r"\bpredict", r"\bпереобуч", r"\bvalidat",
                r"\bвалидац", r"\bseasonal", r"\bсезонн", r"\breshape", r"\bpivot", r"\bmelt\b",
                r"\b(?:wide|long) format", r"\bwhich metric", r"\bкакую метрику",
                r"\ba/b\b", r"\bab[- ]test", r"\btrends?\b", r"\bтренд", r"\bсегментац",
                r"\bgradient boosting", r"\brandom forest", r"\baccuracy\b",
                r"\b(?:сравни|compare)\b.{0,60}\b(?:средн|медиан|конверс|mean|median|average)",
                r"\b(?:train|fit|build)\w*" + _NEAR + r"models?\b",
                r"\b(?:построй|обучи)\w*" + _NEAR + r"модел", blocks_fast=True),
        _signal(h, "data visualisation", 2.5,
                r"\bplot", r"\bheatmap", r"\bhistogram", r"\bгистограмм", r"\bvisuali[sz]",
                r"\bвизуализ", r"\b(?:построй|нарисуй) график", blocks_fast=True),
        _signal(h, "proof", 3,
                r"\bprove\b", r"\bproof\b", r"\bдокаж", r"\bдоказ", r"\btheorem", r"\bтеорем",
                r"\blemma\b", r"\bлемм", blocks_fast=True),
        _signal(h, "multi-step reasoning", 2.5,
                r"\bstep[- ]by[- ]step", r"\bпошагов", r"\bпо шагам", r"\bраспиши\b",
                r"\bwalk me through", r"\bderive\b", r"\bвыведи формул",
                r"\bпокажи (?:рассуждени|решени|ход)", r"\bshow (?:your|the) (?:reasoning|work)",
                r"\bреши задач", r"\btrade-?offs?\b", r"\bспланир", r"\bplan (?:a|an|the|our)\b",
                r"\bdesign (?:a|an|the)\b", r"\bспроектир", r"\barchitectur", r"\bархитектур",
                r"\bвероятност", r"\bprobabilit", r"\blinear program", r"\bоптимальн",
                r"\bwhich should (?:we|i)\b", blocks_fast=True),
        _signal(h, "code in the prompt", 2.5,
                r"```", r"\{\s*in\s*\[\s*-?\d+\s*\]\s*\}", r"^\s*(?:def|class|import|return)\s",
                r"^\s*from\s+\w+\s+import\b", r"^\s*for\s+\w+.*\bin\b.*:\s*$",
                r"\b\w+\.\w+\([^)\n]*\)", r"\bselect\b.+\bfrom\b", blocks_fast=True,
                reads_samples=True),
        _signal(h, "data analysis", 2.5, r"\{\s*out\s*\[\s*-?\d+\s*\]\s*\}", blocks_fast=True,
                reads_samples=True),
        _signal(f, "spam filtering", 3,
                r"\bspam", r"\bспам", r"\bham\b", r"\bphishing", r"\bфишинг"),
        _signal(f, "intent detection", 3,
                r"\bintent", r"\bинтент", r"\bнамерени",
                r"\bwhat does (?:the|this) (?:user|customer) want"),
        _signal(f, "yes/no answer", 3,
                r"\byes or no\b", r"\byes/no\b", r"\bjust yes\b", r"\bда или нет\b",
                r"\bда/нет\b", r"\bответь (?:только )?(?:да|нет)\b", r"\btrue or false\b",
                r"\btrue/false\b", r"\bистина или ложь"),
        _signal(f, "one-word answer", 2.5,
                r"\bone word\b", r"\bsingle word\b", r"\bодним словом", r"\bодно слово",
                r"\bone label\b", r"\bодной меткой", r"\bonly the (?:label|category|numbers?)\b",
                r"\bверни только (?:номер|метк|категор)",
                r"\b(?:варианты|options|labels|categories|категории)\s*:"),
        _signal(f, "classification", 2.5,
                r"\bclassif", r"\bклассифи", r"\bcategori[sz]", r"\bкатегори",
                r"\blabel (?:the|each|this|these)\b", r"\btag (?:each|these|this|the)\b",
                r"\bк какой (?:теме|категории|группе|классу)",
                r"\bwhich (?:category|topic|class|label)", r"\bsentiment", r"\bтональност",
                r"\bpositive,? (?:or )?negative", r"\bположительн\w*,? (?:или )?отрицательн",
                r"\btoxic", r"\bтоксичн", r"\b(?:what|which) language\b", r"\bна каком языке",
                r"\bsound (?:angry|happy|upset)",
                r"\bis (?:this|it) (?:a |an )?\w+ or (?:a |an )?(?:\w+ ){0,2}\w+\?",
                r"\bэто \w+ или (?:\w+ ){0,2}\w+\?", r"\bотносится\b",
                r"\b(?:определи|detect|identify|determine|guess)\b" + _NEAR
                + r"(?:язык|language|тем[уа]|topic|категори|category|тональност|tone|sentiment)",
                r"\b(?:оцени|rate)\b" + _NEAR + r"(?:тон|tone|sentiment|тональност|mood)",
                r"\bwhich (?:department|team|queue)\b", r"\bshould (?:get|handle) this\b",
                r"\b(?:какому|в какой) (?:отдел|команд)",
                r"\bis (?:this|it) (?:a |an )?(?:complaint|question|request|ad|advert\w*|promo\w*|"
                r"scam|fraud|bot)\b", r"\bэто (?:реклама|жалоба|вопрос|мошенни\w*|бот)\b",
                r"\bhate speech", r"\bязык вражды", r"\boffensive", r"\bоскорбл"),
        _signal(f, "classification", 1.5,
                r"\b(?:негативн|позитивн|нейтральн|negative|positive|neutral)",
                r"\b(?:отметь|пометь|mark|flag)\b.{0,40}\b(?:какие|which)\b"),
        _signal(m, "translation", 2,
                r"\btranslat", r"\bпереведи\b", r"\bперевед", r"\bперевод",
                r"\bпо-(?:английски|русски|немецки|французски)", r"\bна (?:английск|русск|немецк)",
                r"\bto (?:german|french|english|spanish|russian)\b"),
        _signal(m, "text processing", 2,
                r"\bsummar", r"\bрезюм", r"\bсократи", r"\bперескаж", r"\brephrase", r"\breword",
                r"\bparaphras", r"\bперефразир", r"\btypos?\b", r"\bопечат", r"\bgrammar",
                r"\bграмматик", r"\bпунктуац", r"\bзапят", r"\bproofread",
                r"\bbullet (?:list|points)", r"\bсписок\b", r"\bсоставь\b", r"\bpolite",
                r"\bвежлив", r"\bformal\b", r"\bshorten", r"\bсожми\b", r"\btidy\b",
                r"\bnotes into\b", r"\bclearer\b", r"\bпонятнее\b",
                r"\b(?:напиши|составь|write|draft)\w*" + _NEAR
                + r"(?:сообщени|письм|пост|текст|emails?|letter|message|note)"),
        _signal(m, "UI answer", 2,
                r"\bbutton", r"\bкнопк", r"\btooltip", r"\bподсказк", r"\bplaceholder",
                r"\bmenu (?:item|label)", r"\bпункт\w* меню", r"\bзаголов", r"\bheading\b",
                r"\btitle for\b", r"\bподпис", r"\bui\b", r"\berror message",
                r"\bсообщени\w* об ошибк", r"\bnotification", r"\bуведомлени", r"\bname for\b",
                r"\bназвани\w* для\b", r"\blabel for\b", r"\bmicrocopy"),
        _signal(m, "simple question", 1.5,
                r"\bпростыми словами", r"\bв двух словах", r"\bone paragraph", r"\bbriefly\b",
                r"\bкратко\b", r"\bin plain (?:english|words)", r"\bрасшифруй", r"\bstand for\b",
                r"\bаббревиатур", r"\bacronym"),
        _signal(m, "simple question", 2,
                r"\bwhat'?s the difference\b", r"\bв ч[её]м (?:разница|отличие)", r"\bчем отлича",
                r"\bexplain what\b", r"\bобъясни,? что такое", r"\bwhat does [^?]{1,40} mean\b",
                r"\bчто означает\b", r"^что такое\b", r"^what (?:is|are) (?:a|an|the)\b"),
        _signal(m, "simple question", 1,
                r"^(?:what|what's|who|when|where|how many|how much|что такое|что значит|"
                r"что означает|кто|когда|где|сколько|какой|какая|какое|какие|как по-)\b"),
        _signal(m, "quick check", 1.5,
                r"\bquick check", r"\bбыстр\w* провер", r"\bпроверь,? (?:правильно|верно|нет ли)",
                r"\bis (?:it|this) correct", r"\bправильно ли\b", r"\bверно ли\b",
                r"\bsanity check"),
    )
# fmt: on


_CODE_TERMS = re.compile(
    r"\b(?:python|питон\w*|pandas|numpy|polars|scipy|sklearn|scikit|matplotlib|seaborn|plotly|"
    r"torch|pytorch|tensorflow|keras|xgboost|lightgbm|groupby|regex\w*|регулярк\w*|json|xml|"
    r"yaml|parquet|csv|sql|api|http|endpoint|threads?|поток\w*|multiprocess\w*|parallel\w*|"
    r"распаралл\w*|многопоточ\w*|async\w*|асинхрон\w*|concurren\w*|files?|файл\w*|folders?|"
    r"папк\w*|director(?:y|ies)|директори\w*|ram|memory|памят\w*|cpu|gpu|cuda|recursion|"
    r"рекурси\w*|algorithm\w*|алгоритм\w*|strings?|dict(?:ionary)?|tuples?|arrays?|массив\w*|"
    r"словар\w*|variables?|переменн\w*|imports?|packages?|библиотек\w*|pip|docker|git|venv|"
    r"modules?|модул\w*|cli|scripts?|скрипт\w*|functions?|функци\w*|methods?|метод\w*|class|"
    r"класс(?:а|у|ы|ом|е|ов|ах|ами)?|code|код(?:а|у|ом|е|ы)?|loops?|цикл\w*|type hints|"
    r"docstrings?|unit tests?|nan|null)\b"
)
_DATA_TERMS = re.compile(
    r"\b(?:dataframes?|датафрейм\w*|\w+_df|df(?:_\w+)?|data ?sets?|датасет\w*|rows|columns?|"
    r"колонк\w*|столбц\w*|столбец|таблиц\w*|index|dtype|missing values|пропуск\w*|"
    r"duplicates?|дубликат\w*|features?|признак\w*|models?|модел\w*|training|обучени\w*|"
    r"imbalance\w*|oversampl\w*|undersampl\w*|class weights?|thresholds?|порог\w*|"
    r"cross-validation|кросс-валидац\w*|hyperparameters?|гиперпараметр\w*|cohorts?|когорт\w*|"
    r"retention|ретеншн|conversion|конверси\w*|revenue|выручк\w*|kpi|metrics?|метрик\w*|"
    r"average|mean|median|средн\w*|медиан\w*|month over month|year over year|schema|"
    r"database|база данных|бд|quer(?:y|ies)|merge|join|regulari[sz]\w*|регуляризац\w*|"
    r"gradient\w*|градиент\w*|loss|learning rate|epochs?|эпох\w*|batch\w*|embeddings?|"
    r"эмбеддинг\w*|tokeni[sz]\w*|токениз\w*|neural|нейросет\w*|table)\b"
)
_ACTION = re.compile(
    r"\bhow (?:do|can|should|would|to)\b|\bwhat'?s the best way\b|\bhelp me\b|\bcan you\b|"
    r"\bi (?:need|want) to\b|\bнужно\b|\bнадо\b|\bхочу\b|\bпомоги\w*|\bсделай\b|"
    r"\bкак (?:мне |нам )?\w+(?:ть|ти)\b|\bпосчитай|\bвычисли|\bрассчитай|\bcalculate|"
    r"\bcompute|\bcount\b|\bfind (?:the )?(?:top|all|rows|duplicates)|"
    r"\bнайди\b|\bпочисти|"
    r"\bclean\b|\bturn (?:this|these|it)\b|\bпреврати|\bприведи|\bпривести|\bубрать|\bубери|"
    r"\bremove\b|\bdrop\b|\bfilter\b|\bsort\b|\bmerge\b|\bjoin\b|\bload\b|\bread\b|"
    r"\bsave\b|\bexport\b|\bзагрузи|\bсохрани|\bпрочитай|\bобъедини|\bотсортируй|"
    r"\bсгруппируй|\badd\b|\bдобавь"
)
_QUOTED = re.compile(r"«[^»]*»|\"[^\"]*\"|“[^”]*”")
TERM_WEIGHT = 0.8  # per distinct programming or data word, up to three
ACTION_WEIGHT = 1.5  # a request to do something with them


@dataclass(frozen=True)
class Domain:
    """Programming and data vocabulary in a prompt: heavy's weight from it, and the reason."""

    weight: float
    reason: str
    technical: bool  # enough of it that fast must not answer


def domain(folded: str) -> Domain | None:
    """How much ``folded`` (a case-folded prompt) is about code or data, or None."""
    code = len({m.group() for m in _CODE_TERMS.finditer(folded)})
    data = len({m.group() for m in _DATA_TERMS.finditer(folded)})
    if not code + data:
        return None
    action = _ACTION.search(folded) is not None
    weight = TERM_WEIGHT * min(code + data, 3) + (ACTION_WEIGHT if action else 0.0)
    reason = "code generation" if code >= data else "data analysis"
    return Domain(weight, reason, technical=action or code + data >= 2)
