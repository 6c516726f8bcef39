"""The tracer's and the checker's English phrases in Chinese, for ``report.zh.md``.

The tracer builds its chains, root-cause details and verification statements from
phrases with numbers in them (``overflow in 6 of 624 elements``). :func:`translate`
rewrites each known phrase into Chinese with the numbers kept as they are, using the
standard terms (上溢, 下溢, 次正规数, 对数空间, 恰为 0, 极点); :func:`untranslated` lists the
English words left in a text, so a test can fail when the tracer learns a phrase this table
does not know yet. Op names (``aten.div.Tensor``, ``DivBackward0``, ``lgamma``, ``_softmax``:
any aten name that is not also an English word), parameter names, dtype names and numbers
stay as they are: they are identifiers, not prose.

>>> translate("div (overflow in 6 of 624 elements, backward DivBackward0: divisor as small as 1.39e-24)")
'div(624 个元素中有 6 个上溢,反向 DivBackward0:除数小至 1.39e-24)'
>>> untranslated("div(624 个元素中有 6 个上溢)"), untranslated("6 of 624 elements")
([], ['elements', 'of'])
"""

from __future__ import annotations

import functools
import re

import torch

_N = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)"
_OP = r"([\w.]+)"

_DT = r"(\w+)"  # a dtype name
_CODE = "(\x00\\d+\x00)"  # a code span, set aside while the phrases are rewritten (see translate)
#: the quantity a verification is about: the loss, or the gradient from one op (its unit label)
_QUANTITIES = [(r"loss", r"损失"), (rf"gradient from (?P<qop>[\w.]+(?: #\d+)?) \((?P<qphase>backward|forward)\)",
                                   r"\g<qop>(\g<qphase>)的梯度")]
#: a value a tracer finding is about (``Tracer.check_result``'s ``what``)
_WHATS = [(r"result", r"结果"), (r"gradient of (?P<wname>[\w.]+)", r"参数 \g<wname> 的梯度"),
          (r"parameter (?P<wname>[\w.]+) after optimizer\.step\(\)", r"optimizer.step() 之后的参数 \g<wname>")]


def _each(alternatives, pattern: str, replacement: str) -> list[tuple[str, str]]:
    """``pattern`` and ``replacement`` once per alternative of the ``{Q}`` placeholder."""
    return [(pattern.replace("{Q}", en), replacement.replace("{Q}", zh)) for en, zh in alternatives]


#: (pattern, replacement), applied in order: longer, more specific phrases first.
PHRASES: list[tuple[str, str]] = [
    # root cause of an evaluation-order failure, and the counterfactual replay's statement
    (rf"{_OP} \((backward|forward)\) makes ±inf/NaN in (\w+) although the exact gradient from {_OP} "
     rf"\((backward|forward)\) is finite \({_N}, float64 replay\): an intermediate of the op's evaluation "
     r"order leaves the range",
     r"\1(\2)在 \3 中产生 ±inf/NaN,而 \4(\5)的精确梯度是有限的(\6,float64 重放):"
     r"该算子求值顺序中的一个中间量超出了表示范围"),
    (rf"the exact gradient from {_OP} \((backward|forward)\) is finite \({_N}, float64 replay\) and "
     r"representable in (\w+): the failure is an artifact of how the arithmetic is ordered, and the fix is a "
     r"rewrite \(e\.g\. log-space\), not an epsilon",
     r"\1(\2)的精确梯度是有限的(\3,float64 重放),并且可以用 \4 表示:失效是运算顺序造成的假象,"
     r"修复办法是改写(例如改到对数空间),而不是加 epsilon"),
    (rf"; the underflow at {_OP} was present, not causal", r";\1 处的下溢确实存在,但不是原因"),
    (r"; computing (.+?) in float64 is enough", r";只需把 \1 改用 float64 计算"),
    (r"; promoting (.+?) is not", r";提升 \1 的精度则不够"),
    (r"; confirmed: ([^;]+)", r";已证实:\1"),
    (r"; present, not causal: ([^;]+)", r";存在但不是原因:\1"),
    (r"; float64 fails too: ([^;]+)", r";float64 也失败:\1"),
    # a verification the watch could not run (stablenca.runtime.watcher.not_verified)
    (rf"not run: the step is an opaque closure, which the watch cannot rebuild in float64; pass the loss function "
     rf"and its inputs: {_CODE}",
     r"未运行:这一步是不透明的闭包,`watch` 无法在 float64 中重建它;请传入损失函数及其输入:\1"),
    (r"not run: the model has no float32 or narrower parameters to replay in float64",
     r"未运行:模型没有 float32 或更窄的参数可在 float64 中重放"),
    (rf"not run: the step runs under {_CODE}, which a float64 replay would keep; see its float32 counterfactual",
     r"未运行:这一步在 \1 下运行,float64 重放也会保留它;请看它的 float32 反事实"),
    (rf"not run: the float64 replay raised {_CODE}", r"未运行:float64 重放抛出了 \1"),
    (r"not run: the loss function does not use the model it is given \(a copy of yours\); compute the loss from it",
     r"未运行:损失函数没有使用传给它的模型(你的模型的副本);请用它来计算损失"),
    (r"not run: the step rebuilt from the loss function and its inputs is finite in (\w+), so it is not the step "
     r"that failed", r"未运行:由损失函数及其输入重建的这一步在 \1 中是有限的,所以它不是失败的那一步"),
    (rf"not run: the failure is in {_CODE}, which the float64 replay of the loss and its gradients does not cover",
     r"未运行:失效发生在 \1 中,损失及其梯度的 float64 重放不涵盖这一步"),
    *_each(_QUANTITIES, rf"(?P<op>[\w.]+(?: #\d+)?) \((?P<ph>backward|forward)\) makes ±inf/NaN in (?P<dt>\w+) although the "
           rf"exact {{Q}} is finite \((?P<v>{_N[1:-1]}), float64 replay\): an intermediate of the op's evaluation "
           r"order leaves the range",
           r"\g<op>(\g<ph>)在 \g<dt> 中产生 ±inf/NaN,而精确的{Q}是有限的(\g<v>,float64 重放):"
           r"该算子求值顺序中的一个中间量超出了表示范围"),
    *_each(_QUANTITIES, rf"the exact {{Q}} \((?P<v>{_N[1:-1]}), float64 replay\) is beyond (?P<dt>\w+)'s range: no "
           r"evaluation order in (?P<dt2>\w+) can hold it, so the fix is a rescaling or log space, not a rewrite of "
           r"the order",
           r"精确的{Q}(\g<v>,float64 重放)超出了 \g<dt> 的表示范围:\g<dt2> 中任何求值顺序都容纳不了它,"
           r"所以修复办法是重新缩放或改到对数空间,而不是改写运算顺序"),
    *_each(_QUANTITIES, rf"the exact {{Q}} is finite \((?P<v>{_N[1:-1]}), float64 replay\) and representable in "
           r"(?P<dt>\w+): the failure is an artifact of how the arithmetic is ordered, and the fix is a rewrite "
           r"\(e\.g\. log-space\), not an epsilon",
           r"精确的{Q}是有限的(\g<v>,float64 重放),并且可以用 \g<dt> 表示:失效是运算顺序造成的假象,"
           r"修复办法是改写(例如改到对数空间),而不是加 epsilon"),
    *_each(_QUANTITIES, rf"the exact {{Q}} \((?P<v>{_N[1:-1]}|not finite), float64 replay\) is beyond "
           r"(?P<dt>\w+)'s range", r"精确的{Q}(\g<v>,float64 重放)超出了 \g<dt> 的表示范围"),
    (rf"the float64 replay fails too, so the failure is not an artifact of {_DT} rounding: a pole, an empty set or "
     r"a domain error of the formula, or a range that float64 lacks as well",
     r"float64 重放同样失败,所以失效不是 \1 舍入造成的假象:而是公式的极点、空集或定义域错误,"
     r"或者是 float64 同样不具备的表示范围"),
    (rf"no set of ops computed in float64 and cast back to {_DT} makes the step finite: the intermediate values "
     rf"themselves leave {_DT}'s range, so only a rewrite helps",
     r"没有哪一组算子改用 float64 计算再转回 \1 能让这一步变为有限:中间值本身就超出了 \2 的表示范围,"
     r"只有改写才有用"),
    *[(rf"; the {kind} at {_OP} was present, not causal", rf";\1 处的{zh}确实存在,但不是原因")
      for kind, zh in (("overflow", "上溢"), ("cancellation", "相消"), ("empty_set", "空集"), ("mask", "掩码"),
                       ("division_by_zero", "除以零"), ("domain", "定义域错误"))],
    (r"not finite", r"非有限"),
    (rf"{_N} precursor", r"\1 前兆"),
    # the value a finding is about, and how an intentional or input ±inf reached it
    *_each(_WHATS, r"non-finite {Q}: (?P<n>\d+) of (?P<m>\d+) elements", r"{Q}非有限:\g<m> 个元素中有 \g<n> 个"),
    *_each(_WHATS, r"; it reached the {Q}", r";它传到了{Q}"),
    *_each(_WHATS, r"; an intentional ±inf from (?P<op>[\w.]+) reached the {Q}",
           r";来自 \g<op> 的有意 ±inf 传到了{Q}"),
    (rf"; the infinities came from {_OP} \(intentional, allow-listed\)", r";这些无穷来自 \1(有意为之,已列入允许清单)"),
    (rf"intentional ±inf \({_OP}\)", r"有意的 ±inf(\1)"),
    (r"(parameter ([\w.]+)|a parameter|an input tensor)( \(seen through a view\))? (\w+\[[\d, ]*\]) already holds "
     r"(.+?) \(not produced under the tracer\)", r"\1\3 \4 已含有 \5(不是在追踪下产生的)"),
    (r"parameter ([\w.]+) \(seen through a view\)", r"参数 \1(经由视图看到)"),
    (r"parameter ([\w.]+)", r"参数 \1"),
    (r"a parameter \(seen through a view\)", r"一个参数(经由视图看到)"),
    (r"an input tensor \(seen through a view\)", r"一个输入张量(经由视图看到)"),
    (r"a parameter", r"一个参数"),
    (r"an input tensor", r"一个输入张量"),
    (r"← input \(", r"← 输入("),
    (rf"{_N} NaN and {_N} ±inf appeared here but never reached a non-finite result \(masked out or absorbed\)",
     r"这里出现了 \1 个 NaN 和 \2 个 ±inf,但从未到达非有限的结果(被掩码去掉或被吸收)"),
    (rf"{_N} NaN and {_N} ±inf in the output", r"输出中有 \1 个 NaN 和 \2 个 ±inf"),
    (rf"{_N} NaN, {_N} ±inf", r"\1 个 NaN,\2 个 ±inf"),
    (r" \(some inputs were modified in place before the values were used\)", r"(部分输入在取值之前已被原地修改)"),
    (r": the zero is an exact value with no precursor upstream", r":这个 0 是精确值,上游没有前兆"),
    # the pattern of the first non-finite op: "<pattern> in k of n elements"
    (r"reduction over an empty set", r"空集上的归约"),
    (r"mean of an empty set", r"空集的均值"),
    (rf"softmax of an all -inf row \({_N} rows\)", r"整行为 -inf 的 softmax(\1 行)"),
    (r"NaN from finite inputs", r"有限输入产生的 NaN"),
    (r"NaN from infinite inputs", r"无穷输入产生的 NaN"),
    (r"NaN input", r"NaN 输入"),
    (r"\(in-place\)", r"(原地)"),
    (r"pow\(negative, fractional\)", r"pow(负数, 分数)"),
    (r"\(negative\)", r"(负数)"),
    (r"\^negative", r"^负数"),
    (rf"pole in {_N} of {_N} elements", r"\2 个元素中有 \1 个极点"),
    (rf"overflow in {_N} of {_N} elements", r"\2 个元素中有 \1 个上溢"),
    (rf" in {_N} of {_N} elements", r",出现在 \2 个元素中的 \1 个"),
    # overflow, pole (float64 and mpmath recompute)
    (r"float64 and mpmath recompute", r"float64 与 mpmath 重算"),
    (r"float64 recompute", r"float64 重算"),
    (rf"{_N} results? infinite in exact arithmetic too \(([^:]+): ±inf, inputs from {_N} to {_N}\): a pole or an "
     r"infeasible problem, not an overflow",
     r"\1 个结果在精确算术中同样为无穷(\2:±inf,输入从 \3 到 \4):是极点或无解的问题,而不是上溢"),
    (rf"; the exact value, up to {_N} \(mpmath\), is beyond float64 too",
     r";精确值(mpmath)高达 \1,同样超出 float64 的范围"),
    (rf"{_N} finite inputs? → inf \(largest input {_N}; {_DT} (exp2?|expm1)\(x\) overflows above {_N}\)",
     r"\1 个有限输入 → inf(最大输入 \2;\3 中 \4(x) 在 \5 以上上溢)"),
    (rf"quotient up to {_N} from a divisor as small as {_N}", r"商高达 \1,来自小至 \2 的除数"),
    (rf"base as small as {_N} to a negative power", r"底数小至 \1 且指数为负"),
    (rf"base values as small as {_N}: {_N} of {_N} below {_N} where the result overflowed",
     r"底数小至 \1:\3 个中有 \2 个低于 \4,结果在此上溢"),
    (rf"; the tiny base traces back to {_OP} \(", r";这个极小的底数可追溯到 \1("),
    # exact zeros: empty selections, zero spreads, underflow of ops without a name list
    (rf"exact 0 in {_N} of {_N} rows: ", r"\2 行中有 \1 行恰为 0:"),
    (rf"the mask selected nothing in {_N}", r"有 \1 行掩码什么也没有选中"),
    (r"the mask selected nothing", r"掩码什么也没有选中"),
    (r"every selected term was 0\.0, underflow upstream", r"选中的每一项都是 0.0,源于上游的下溢"),
    (r"every selected term was 0\.0, cancellation upstream", r"选中的每一项都是 0.0,源于上游的相消"),
    (r"every selected term was 0\.0, zeros upstream", r"选中的每一项都是 0.0,源于上游的 0 值"),
    (rf"(源于上游的\S+?) in {_N}", r"\1(共 \2 行)"),
    (rf"{_OP} over 0 elements → 0\.0 in {_N} rows \(an empty selection\)", r"\1 在 0 个元素上归约 → \2 行为 0.0(空选择)"),
    (rf"{_OP} reduced over 0 elements \(input {_N} is empty\) → NaN", r"\1 在 0 个元素上归约(输入 \2 为空)→ NaN"),
    (rf"mean over 0 elements → NaN in {_N} rows", r"mean 在 0 个元素上求均值 → \1 行为 NaN"),
    (rf"{_OP} is exactly 0 in {_N} of {_N} outputs \(every reduced value is equal\)",
     r"\1 在 \3 个输出中有 \2 个恰为 0(参与归约的值全部相等)"),
    (rf"{_OP} is exactly 0 in {_N} of {_N} outputs \(every reduced value is 0\)",
     r"\1 在 \3 个输出中有 \2 个恰为 0(参与归约的值全部为 0)"),
    (rf"{_OP} over {_N} rows whose every entry is -inf \(masked\) → -inf", r"\1 作用于 \2 行,每行的所有条目都是 -inf(被掩码)→ -inf"),
    (rf"{_OP} over {_N} rows whose every entry is -inf → NaN", r"\1 作用于 \2 行,每行的所有条目都是 -inf → NaN"),
    (rf"{_N} results? → 0\.0 whose float64 value is not zero \(as large as {_N}; {_DT} normal numbers reach {_N}\)",
     r"\1 个结果 → 0.0,而其 float64 值不为 0(最大为 \2;\3 的正规数下限为 \4)"),
    (rf"{_N} results? of finite non-zero operands → 0\.0 \(e\.g\. ([^)]+)\)", r"\1 个结果由有限非零操作数得到 0.0(例如 \2)"),
    (rf"{_N} of {_N} entries → 0\.0 from finite logits \(gap to the row max ≥ {_N}; {_DT} exp rounds to 0\.0 beyond {_N}\)",
     r"\2 个条目中有 \1 个由有限的 logit 变为 0.0(与行最大值之差 ≥ \3;\4 中差值超过 \5 时 exp 舍入为 0.0)"),
    (rf"{_N} finite inputs? → 0\.0 \(x from {_N} to {_N}\)", r"\1 个有限输入 → 0.0(x 从 \2 到 \3)"),
    (r"no exact zeros", r"没有恰为 0 的输出"),
    # cancellation
    (rf"{_N} of {_N} results cancelled to exactly 0\.0 \(e\.g\. ([^)]+)\): all {_N} significand bits lost",
     r"\2 个结果中有 \1 个相消后恰为 0.0(例如 \3):\4 位有效位全部丢失"),
    (rf"; {_N} more lost ≥ {_N} bits", r";另有 \1 个丢失 ≥ \2 位"),
    (rf"{_N} of {_N} results lost ≥ {_N} of {_N} significand bits \(max {_N}, e\.g\. ([^)]+)\)",
     r"\2 个结果中有 \1 个丢失了 \4 位有效位中的 ≥ \3 位(最多 \5 位,例如 \6)"),
    # overflow details
    (rf"{_N} finite results? beyond ±{_N} → ±inf \(largest input magnitude {_N}\)",
     r"\1 个有限结果超出 ±\2 → ±inf(最大输入量级 \3)"),
    (rf"; the tiny divisor traces back to {_OP} \(", r";这个极小的除数可追溯到 \1("),
    (r", with no precursor upstream", r",上游没有前兆"),
    (rf"divisor values as small as {_N}: {_N} of {_N} below {_N} where the result overflowed",
     r"除数小至 \1:\3 个中有 \2 个低于 \4,结果在此上溢"),
    (rf"divisor as small as {_N}", r"除数小至 \1"),
    (rf"overflow in {_N} of {_N} elements", r"\2 个元素中有 \1 个上溢"),
    (rf"0/0 in {_N} of {_N} elements", r"\2 个元素中有 \1 个为 0/0"),
    # underflow details
    (rf"{_N} finite inputs? → 0\.0: x ≤ {_N} \((\w+) exp\(x\) rounds to 0\.0 below {_N}\)",
     r"\1 个有限输入 → 0.0:x ≤ \2(\3 中 exp(x) 在 \4 以下舍入为 0.0)"),
    (rf"{_N} subnormal outputs", r"\1 个次正规数输出"),
    (rf"outputs below {_N}, as small as {_N} at x = {_N}", r"输出低于 \1,最小为 \2(在 x = \3 处)"),
    (rf"outputs below {_N}, as small as {_N}", r"输出低于 \1,最小为 \2"),
    (rf"no zero or subnormal output \((\w+) normal numbers reach {_N}\)",
     r"没有恰为 0 或次正规数的输出(\1 的正规数下限为 \2)"),
    (r"exp underflow", r"exp 下溢"),
    (r"mask multiply", r"掩码乘法"),
    (r"\(mask\)", r"(掩码)"),
    (r" underflow\b", r" 下溢"),
    (r" overflow\b", r" 上溢"),
    (r" cancellation\b", r" 相消"),
    (r"sum empty_set", r"sum 空集"),
    # the checker's reasons
    (r"non-finite gradient", r"梯度非有限"),
    (r"non-finite loss", r"损失非有限"),
    (rf"loss {_N} bits", r"损失误差 \1 位"),
    (rf"gradient {_N} bits", r"梯度误差 \1 位"),
    # phase words and punctuation left around them
    (r"\(backward\)", r"(反向)"),
    (r"\(forward\)", r"(前向)"),
    (r", backward ", r",反向 "),
    (r", forward\)", r",前向)"),
    (r", forward:", r",前向:"),
    (r"; ", r";"),
    (r"(\w) \(", r"\1("),
    (r"\)", r")"),
    (r"\(", r"("),
    (r": ", r":"),
    (r", ", r","),
]

_COMPILED = [(re.compile(pattern), replacement) for pattern, replacement in PHRASES]

#: Root-cause kinds and verdicts as the Chinese report names them.
KINDS = {"evaluation_order": "求值顺序", "overflow": "上溢", "underflow": "下溢", "cancellation": "相消",
         "division_by_zero": "除以零", "domain": "定义域错误", "empty_set": "空集", "nan_input": "NaN 输入"}
VERDICTS = {"confirmed": "已证实", "present, not causal": "存在但不是原因", "float64 fails too": "float64 也失败"}

#: Words that are identifiers, not prose: they stay in a Chinese text.
IDENTIFIERS = {"aten", "exp", "sum", "mul", "div", "log", "rsub", "sub", "add", "cdist", "softmax", "logsumexp",
               "float16", "bfloat16", "float32", "float64", "NaN", "inf", "epsilon", "Tensor", "default",
               "Scalar", "IntList", "dim", "stablenca", "torch", "mpmath"}


#: Ordinary English words that are also aten names (``torch.ops.aten.where``): prose, not op names.
ENGLISH_OP_NAMES = {"all", "any", "append", "backward", "complex", "copy", "count", "data", "device", "divide",
                    "empty", "equal", "expand", "extend", "fill", "fix", "format", "full", "gather", "get",
                    "gradient", "index", "indices", "inner", "item", "items", "join", "keys", "list", "max",
                    "maximum", "min", "minimum", "mode", "multiply", "name", "negative", "normal", "owner", "pop",
                    "positive", "put", "range", "real", "remove", "replace", "round", "save", "select", "set",
                    "sign", "size", "sorted", "split", "square", "stack", "take", "tensor", "to", "trace",
                    "update", "values", "view", "warn", "where", "zero", "zeros"}


@functools.lru_cache(maxsize=None)
def _is_op_name(word: str) -> bool:
    """An aten op's name (``lgamma``, ``_softmax``, ``add_``, ``linalg_vector_norm``): an identifier."""
    return word not in ENGLISH_OP_NAMES and hasattr(torch.ops.aten, word)


def translate(text: str) -> str:
    """``text`` with every known tracer/checker phrase in Chinese (numbers and identifiers kept).

    Code spans (text in backticks) are kept verbatim: the punctuation rules do not reach them.
    """
    spans: list[str] = []

    def set_aside(match: re.Match) -> str:
        spans.append(match.group(0))
        return f"\x00{len(spans) - 1}\x00"

    text = re.sub(r"`[^`]*`", set_aside, text)
    for pattern, replacement in _COMPILED:
        text = pattern.sub(replacement, text)
    return re.sub("\x00(\\d+)\x00", lambda match: spans[int(match.group(1))], text)


def untranslated(text: str) -> list[str]:
    """The English words left in ``text`` (sorted, unique), ignoring identifiers and code spans."""
    text = re.sub(r"`[^`]*`", " ", text)  # code spans are identifiers by construction
    text = re.sub(r"参数 [\w.]+", " ", text)  # a parameter's name is an identifier
    words = set(re.findall(r"(?<![\w.])[A-Za-z][A-Za-z_]+(?![\w.]*\d)", text))
    words = {w for w in words if w not in IDENTIFIERS and not re.fullmatch(r"\w+Backward\d*", w)
             and not w.startswith("aten") and not _is_op_name(w)}
    return sorted(words)
