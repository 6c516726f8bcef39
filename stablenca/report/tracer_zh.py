"""The tracer's and the checker's English phrases in Chinese, for ``report.zh.md``.

The tracer builds its chains, root-cause details and verification statements from
phrases with numbers in them (``overflow in 6 of 624 elements``). :func:`translate`
rewrites each known phrase into Chinese with the numbers kept as they are, using the
standard terms (上溢, 下溢, 次正规数, 恰为 0); :func:`untranslated` lists the English
words left in a text, so a test can fail when the tracer learns a phrase this table
does not know yet. Op names (``aten.div.Tensor``, ``DivBackward0``, ``exp``), dtype names
and numbers stay as they are: they are identifiers, not prose.

>>> translate("div (overflow in 6 of 624 elements, backward DivBackward0: divisor as small as 1.39e-24)")
'div(624 个元素中有 6 个上溢,反向 DivBackward0:除数小至 1.39e-24)'
>>> untranslated("div(624 个元素中有 6 个上溢)"), untranslated("6 of 624 elements")
([], ['elements', 'of'])
"""

from __future__ import annotations

import re

_N = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)"
_OP = r"([\w.]+)"

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
    (rf"the exact loss is finite \({_N}, float64 replay\) and representable in (\w+)",
     r"精确损失是有限的(\1,float64 重放),并且可以用 \2 表示"),
    (rf"; the underflow at {_OP} was present, not causal", r";\1 处的下溢确实存在,但不是原因"),
    (r"; computing (.+?) in float64 is enough", r";只需把 \1 改用 float64 计算"),
    (r"; promoting (.+?) is not", r";提升 \1 的精度则不够"),
    (r"; confirmed: ([^;]+)", r";已证实:\1"),
    (r"; present, not causal: ([^;]+)", r";存在但不是原因:\1"),
    (r"; float64 fails too: ([^;]+)", r";float64 也失败:\1"),
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
    (rf"{_N} finite inputs → 0\.0: x ≤ {_N} \((\w+) exp\(x\) rounds to 0\.0 below {_N}\)",
     r"\1 个有限输入 → 0.0:x ≤ \2(\3 中 exp(x) 在 \4 以下舍入为 0.0)"),
    (rf"{_N} subnormal outputs", r"\1 个次正规数输出"),
    (rf"outputs below {_N}, as small as {_N} at x = {_N}", r"输出低于 \1,最小为 \2(在 x = \3 处)"),
    (rf"no zero or subnormal output \((\w+) normal numbers reach {_N}\)",
     r"没有恰为 0 或次正规数的输出(\1 的正规数下限为 \2)"),
    (r"exp underflow", r"exp 下溢"),
    (r"mask multiply", r"掩码乘法"),
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
               "Scalar", "IntList", "dim", "stablenca", "torch"}


def translate(text: str) -> str:
    """``text`` with every known tracer/checker phrase in Chinese (numbers and identifiers kept)."""
    for pattern, replacement in _COMPILED:
        text = pattern.sub(replacement, text)
    return text


def untranslated(text: str) -> list[str]:
    """The English words left in ``text`` (sorted, unique), ignoring identifiers and code spans."""
    text = re.sub(r"`[^`]*`", " ", text)  # code spans are identifiers by construction
    words = set(re.findall(r"(?<![\w.])[A-Za-z][A-Za-z_]+(?![\w.]*\d)", text))
    words = {w for w in words if w not in IDENTIFIERS and not re.fullmatch(r"\w+Backward\d*", w)
             and not w.startswith("aten")}
    return sorted(words)
