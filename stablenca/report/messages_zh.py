"""报告的中文消息：消息 id → 模板（``str.format`` 字段），与 :mod:`.messages_en` 的 id 一一对应。

The Chinese messages of the diagnose report, one for every id of :mod:`.messages_en`.
"""

ZH: dict[str, str] = {
    "raw": "{text}",
    "title": "stablenca 诊断报告",
    "intro": "数据：{data}；随机种子 {seed}；共 {n_runs} 个运行。下文的每个数字都读自本目录的 `summary.json` 与 "
             "`<run>/records.jsonl`（每个训练批次一条记录）；撰写本报告时没有重新训练。",
    "intro_command": "命令：`{command}`。",
    "interrupted": "**本次诊断被中断。** 报告只涵盖中断前记录下来的内容：{n_recorded} 个运行有记录，{n_cut} 个运行标为"
                   "*已中断*（它们没有最终结果，记录可能停在某个轮次中间）。",
    "no_runs": "本目录中没有记录任何运行。",
    "no_records": "`{run}`：没有写入任何记录。",
    "not_run": "`{loss}`：未运行。",
    "h_short": "概要",
    "short_failed": "`{run}` 在第 {step} 步出现非有限值：首个出错的运算是 `{op}`（{phase}），根本原因是 `{root_op}` 处的 `{kind}`。",
    "short_finite": "`{run}`（{status}）：已记录的 {n_steps} 步中有 {n_finite} 步为有限值。",
    "short_interrupted": "`{run}` 在记录了 {n_steps} 步之后被中断。",
    "short_zero": "它的 `exp`/softmax 第一次输出精确的 0.0 是在第 {step} 步。",
    "short_no_zero": "它的 `exp`/softmax 输出从未精确为 0.0。",
    "h_runs": "{n}. 各个运行",
    "col_run": "运行", "col_model": "模型", "col_loss": "损失", "col_dtype": "数据类型", "col_status": "状态",
    "col_steps": "已记录步数", "col_first": "首个非有限值", "col_root": "根本原因",
    "col_acc": "测试准确率", "col_breakdown": "失效尺度", "col_reason": "原因",
    "col_finite": "有限比例", "col_bits": "误差位数（中位数 / 最大值）",
    "cell_first": "第 {step} 步：`{op}`（{phase}）",
    "cell_none": "无",
    "runs_note": ("损失或梯度不是有限值的那一步永远不会被应用：运行在该处停止。测试准确率取自保留的检查点：ModernNCA 协议下是"
                  "验证准确率最高的那一轮（对发散的运行，是失败之前的某一轮），学生的协议不保留检查点，用的是最后一组有限的参数。"
                  "步数和轮次与记录中一样从 0 开始计数。"),
    "status_completed": "完成", "status_early_stopped": "提前停止", "status_diverged": "发散",
    "status_interrupted": "已中断",
    "phase_forward": "前向", "phase_backward": "反向", "phase_optimizer": "优化器",
    "phase_unknown": "未知阶段",
    "h_ratio": "{n}. 比值损失没有下界，所以训练会把距离越拉越大",
    "ratio_formula": "学生的损失是 `−log(P_same / P_diff)`，其中 `P = exp(−d/T)`，`P_same` 对查询样本自己的类别求和，"
                     "`P_diff` 只对*其他*类别求和。由于分母不包含自己的类别，`P_same / P_diff` 不是概率：它可以大于 1，"
                     "所以损失可以低于 0，而且没有下界。若同类近邻的距离为 `a`、异类近邻的距离为 `b`，损失就是 `a − b`；"
                     "把所有距离乘以 `s`，损失也乘以 `s`。一旦查询样本离自己的类别比离其他类别更近，继续降低损失最省事"
                     "的办法就是把整个距离尺度放大。",
    "ratio_logit": ("记 `p = P_same / (P_same + P_diff)`，比值损失就是 `−log p + log(1 − p) = −logit(p)`。NCA 的 `−log p` "
                    "在已分对的行上也会随尺度增大而下降，但这份收益指数级衰减，分错的行又会往回推，所以它有有限的最优尺度；"
                    "比值损失则随尺度*线性*下降，推动力永不减弱（推导见 `docs/exercises.zh.md` 练习 2）。"),
    "ratio_loss": "在 `{run}` 中，损失从 {loss0}（第 {step0} 步）变为 {loss_min}（第 {loss_min_step} 步）；"
                  "已记录的 {n_steps} 步中有 {n_negative} 步损失为负，而真正的 NCA 损失（`−log p`，`p ≤ 1`）绝不会为负。",
    "ratio_dmax": "与此同时，最大距离 `d_max` 从 {d0}（第 {step0} 步）增长到 {dpeak}（第 {dpeak_step} 步），"
                  "增大了 {factor} 倍。",
    "ratio_growth": "`{key}`：{a}（第 {a_step} 步）→ {b}（第 {b_step} 步）。",
    "ratio_pdiff": "各行中最小的异类和 `P_diff` 从 {a}（第 {a_step} 步）一路降到 {low}（第 {low_step} 步）。",
    "ratio_see_figures": "下面的时间线图和失效区域图逐步展示了这些序列。",
    "h_underflow": "{n}. 距离是否越过了 exp 的下溢界限？",
    "limits": "在 {dtype} 中，当 `d > {normal}` 时 `exp(−d)` 离开正规数范围（变为次正规数并损失精度），当 "
              "`d > {zero}` 时舍入为精确的 0.0。这些是 IEEE 浮点数的常数，与模型无关；这里的距离已经除以温度 T。",
    "limits_other": "（作为对比，{dtype} 的界限是 {normal} 和 {zero}。）",
    "underflow_yes": "`{run}`：**是**。第一个精确的 0.0 出现在第 {step} 步（第 {epoch} 轮）：有 {count} 个 `{key}` "
                     "元素为 0.0，当时 `d_max` 为 {dmax}。该计数的峰值为每批 {peak} 个（第 {peak_step} 步）。",
    "underflow_no_below": "`{run}`：**否**。在已记录的 {n_steps} 步中没有任何输出精确为 0.0（`{key}` 始终为 0）；"
                          "`d_max` 的峰值为 {dmax}（第 {dmax_step} 步），低于次正规界限 {normal}。",
    "underflow_no_above": "`{run}`：**没有精确的零**。在已记录的 {n_steps} 步中没有任何输出精确为 0.0（`{key}` 始终为 0），"
                          "尽管 `d_max` 的峰值 {dmax}（第 {dmax_step} 步）高于次正规界限 {normal}。",
    "underflow_unknown": "`{run}`：该损失没有公开 `exp` 或 softmax 的输出，因此没有统计下溢；`d_max` 的峰值为 {dmax}"
                         "（第 {dmax_step} 步），界限为 {zero}。",
    "subnormal_first": "次正规输出最早出现在第 {step} 步（`d_max` 为 {dmax}）。",
    "crossed_zero": "`d_max` 在第 {step} 步首次超过 {zero}（{dmax}）。",
    "at_failure_p": "在失败的第 {step} 步：`d_max` = {dmax}，最小的 `P_same` = {psame}，最小的 `P_diff` = {pdiff}。",
    "at_failure": "在失败的第 {step} 步：`d_max` = {dmax}。",
    "h_failure": "{n}. 第一个非有限值是如何出现的",
    "no_failure": "{n_runs} 个运行都没有产生非有限的损失或梯度。",
    "failure_head": "`{run}`，第 {step} 步（第 {epoch} 轮）：第一个由有限输入产生 NaN/inf 的算子是**{phase_word}**"
                    "传播中的 `{op}`{node}，位于 `{source}`。模式 `{pattern}`；根本原因：`{root_op}` 处的 `{kind}`："
                    "{detail}。",
    "explain_backward_overflow": ("这一步的前向损失仍然是有限的（{loss}）。`DivBackward0` 对 `P_diff` 的梯度按 "
                                 "`−grad · ((P_same / P_diff) / P_diff)` 计算：记 `a = −ln P_same`、`b = −ln P_diff`，"
                                 "中间量 `(P_same / P_diff) / P_diff = e^(2b − a)` 在乘以极小的 `grad` 之前就已算出，所以一旦 "
                                 "`2b − a` 超过 `ln({fmax})` = {ln_max} 它就上溢，尽管乘积（精确梯度）是有限的。被追踪的除法中"
                                 "分子最大为 {big}，除数最小为 {small}。"),
    "explain_backward_overflow_short": "这一步的前向损失仍然是有限的（{loss}）；反向传播要再除一次这些很小的和，"
                                       "其中一个商超过了 {dtype} 的最大值 {fmax}。",
    "failure_verified": "反事实重放（`stablenca.trace.verify`）：{statement}。",
    "failure_precursor": "在同一步的前向传播中，已有 {count} 个由 `{key}` 统计的输出悄无声息地下溢为精确的 0.0，"
                         "没有任何报错；最早出现这种情况的是第 {first} 步。这些无声的零从和中去掉了一些项，把 `P_diff` 推向 0。",
    "failure_no_precursor": "在那一步没有任何输出下溢为精确的 0.0（`{key}` = 0）：某一行的其他类别都离得很远，"
                            "使 `P_diff` 极小但不为零，这就足够了。",
    "explain_forward_overflow": "前向传播中一个有限值超过了 {dtype} 的最大值 {fmax}。",
    "explain_nan": "某一行的 `P_same` 和 `P_diff` 都精确为 0.0，所以 `P_same / P_diff` = 0/0 = NaN：该行所有的 "
                   "`exp(−d)` 都已下溢。",
    "explain_xdiv0": "某一行的 `P_diff` 精确为 0.0（所有异类项都已下溢），而 `P_same > 0`，所以比值为 +inf，损失为 −inf。",
    "explain_log0": "某一行的 `P_same` 精确为 0.0（所有同类项都已下溢，或该行没有同类近邻），所以 `log(0)` = −inf，"
                    "损失为 +inf。",
    "explain_infinf": "两个符号相反的无穷大在加法中相遇（`inf − inf` = NaN）。",
    "explain_zeroinf": "零与无穷大在乘法中相遇（`0 × inf` = NaN）。",
    "explain_generic": "追踪器把它归类为 `{pattern}`。",
    "root_underflow": "根本原因更早，而且是无声的：`{root_op}` 把有限的输入变成了精确的零，这些零一直传到了出错的算子。",
    "root_empty_set": "根本原因是 `{root_op}` 处对空集求和：掩码没有选中任何元素，例如某个查询样本是批次中其类别的唯一成员。",
    "root_cancellation": "根本原因是 `{root_op}` 处的相消：两个几乎相等的数相减，丢失了大部分有效位。",
    "root_nonfinite_input": "NaN/inf 早已存在于输入或参数中（`{root_op}`）。",
    "root_domain": "`{root_op}` 在其定义域之外被求值。",
    "root_division_by_zero": "一个本身就是输入值的精确零在 `{root_op}` 处碰到了极点。",
    "chain_intro": "追踪到的链条（首个非有限算子在前，`←` 指向它的原因）：",
    "replay": "用 `stablenca replay {capsule}` 在追踪器下重放这一步。",
    "h_singleton": "{n}. 批次中只有一个成员的类别会立刻得到 log(0)",
    "singleton_formula": "如果某个查询样本是批次中其类别的唯一成员，`P_same` 就是空和：在任何距离尺度下都精确为 0，"
                         "所以从第一步起 `−log(0 / P_diff)` = +inf，根本不需要距离尺度增长。",
    "singleton_seen": "`{run}`（`{loss}`）：第 {step} 步首次出现 {count} 个没有同类近邻的行（该步损失：{loss_at}）；"
                      "单个批次中最多 {peak} 个。",
    "singleton_not_seen": "本次运行中没有出现：在记录它的 {n_runs} 个运行的全部 {n_steps} 个已记录步中，"
                          "`rows_without_same_class` 始终为 0（批大小 {sizes}）。",
    "singleton_not_recorded": "本次运行没有记录这一项（没有损失公开类别掩码）。",
    "singleton_logspace": "`{run}` 会排除这样的行，而不是把它们变成 inf：整个运行中共排除了 {excluded} 行。",
    "h_eps": "{n}. epsilon 补丁（`ratio_eps`）掩盖了失效",
    "eps_run": "`{run}`（{status}，已记录 {n_steps} 步）：{n_steps} 步中有 {n_finite} 步损失为有限值，"
               "范围在 {loss_min} 到 {loss_max} 之间。",
    "eps_zeros": "然而 `exp` 确实下溢了：第 {step} 步首次出现精确的零，每批最多 {peak} 个（第 {peak_step} 步）。",
    "eps_no_zeros": "在已记录的 {n_steps} 步中 `exp` 没有返回精确的零。",
    "eps_small": "各行中最小的 `P_same` 达到 {psame}（第 {psame_step} 步），最小的 `P_diff` 达到 {pdiff}"
                 "（第 {pdiff_step} 步）。",
    "eps_formula": ("这个补丁完全照学生的写法，给两个和都加上 `{eps}`，并在除数中再加一次："
                    "`−log((P_same + {eps}) / (P_diff + {eps} + {eps}))`。它让损失有界，但远小于 `{eps}` 的和就不再起作用："
                    "损失饱和（两个和都为 0 时钉在 log 2），而 `log(P + c)` 的梯度是 `P′ / (P + c)` 而不是 `P′ / P`，"
                    "乘以因子 `P / (P + c)`（对 `P_same`，c = `{eps}`；对 `P_diff`，c 是它的两倍）。"),
    "eps_below": "在已记录的 {n_steps} 步中有 {n_below} 步，某一行的 `P_same` 或 `P_diff` 低于 `{eps}`。",
    "eps_bias": "在记录到的最小非零和 {p} 处，这个因子是 {factor}。",
    "eps_exact_zero": "有 {n_zero} 步中某一行的和精确为 0.0：在那里，经过这个和的梯度精确为 0。",
    "eps_dead": "有 {n_dead} 步的梯度恰为 0：每一行的两个和都已下溢，损失停在 log 2，训练悄无声息地停了下来。",
    "eps_conclusion": "NaN 消失了，但和已下溢的那些行得到的是有偏的（趋于消失的）梯度，损失本身不会告诉你这一点；只有记录会。",
    "h_difference": "{n}. 差值损失保持有限，但远处的样本对不再学习",
    "difference_formula": "`P_diff.sum() − P_same.sum()` 是 `exp(−d)` 项的有界和，从不产生 NaN。它对某一对样本距离的"
                          "导数是 `±exp(−d)`，所以每一对的贡献与 `exp(−d)` 成正比：远处的样本对（几乎）没有贡献。",
    "difference_run": "`{run}`（{status}）：已记录的 {n_steps} 步中有 {n_finite} 步为有限值。",
    "difference_weight": "在记录到的最大距离 {dmax}（第 {step} 步）处，一对样本的梯度权重 `exp(−d)` 为 {weight}。",
    "difference_weight_zero": "在 {dtype} 中它精确为 0.0（超过了 {zero}）。",
    "difference_zeros": "精确为 0.0 的 `exp` 输出，也就是梯度精确为零的样本对，最早出现在第 {step} 步，"
                        "每批最多达到 {peak} 个（第 {peak_step} 步）。",
    "difference_no_zeros": "没有任何 `exp` 输出精确为 0.0。",
    "difference_grad": "总梯度范数在第 {s0} 步为 {g0}，在第 {s1} 步为 {g1}，最小时为 {glow}（第 {slow} 步）："
                       "损失是对整个批次求和，所以近处的样本对让它保持很大，而远处的样本对退出了学习。",
    "h_stable": "{n}. 对数空间形式和 TALENT 的 softmax 形式保持有限",
    "stable_formula": ("`nca_logspace` 使用 `logsumexp(x) = m + log Σ exp(x − m)`，其中 `m = max x`；TALENT 的 "
                      "`softmax` 同样先减去每行的最大值。于是最大的一项是 `exp(0) = 1`，和至少为 1，它的对数在任何距离"
                      "尺度下都是有限的；远低于最大值的项仍可能下溢为 0.0，但这只会丢掉它们微不足道的份额。它们的分母包含"
                      "自己的类别，所以损失是 `−log p`，`p ≤ 1`：下界为 0。放大尺度在已分对的行上仍能让它略微下降，但这份"
                      "收益指数级衰减，分错的行又会往回推，所以尺度会稳定下来。"),
    "stable_run": "`{run}`（{status}）：已记录的 {n_steps} 步中有 {n_finite} 步为有限值；`d_max` 的峰值为 {dmax}；"
                  "测试准确率 {acc}。",
    "stable_softmax_zero": "有 {n} 步出现 softmax 元素下溢为 0.0（每批最多 {peak} 个），但损失仍然有限。",
    "stable_softmax_none": "没有任何 softmax 元素下溢为 0.0。",
    "stable_beyond": "它的距离达到了 {dmax}，超过了 exp 界限 {zero}，却没有造成问题。",
    "h_check": "{n}. 误差与距离尺度（`stablenca check`）",
    "check_intro": "在生成的批次上扫描每种形式与数据类型：开始失效的最小尺度（非有限，或超过一半的有效位出错）及其误差位数。",
    "check_scale": ("尺度 s：每个生成的批次把每一行最近的同类距离与最近的异类距离（已除以温度，即 exp 的自变量）放在 "
                    "[s, 1.25 s] 内；s 从 {low} 取到 {high}，每十倍 {per_decade} 个点。于是各个和中的项都接近 exp(−s)："
                    "在 {dtype} 中 s 超过 {normal} 时 exp(−s) 为次正规数，超过 {zero} 时恰为 0.0。"),
    "check_metric": ("度量是 Herbie 的误差位数：log2(1 + 计算出的损失与舍入到该数据类型的精确损失之间相差的末位单位数)。"
                     "0 表示正确舍入，每多错一位距离加倍；结果错到浮点数所能错的最远时（有限值对无穷，或 0 对非零值），"
                     "它达到存储位宽（float32 为 32 位，float64 为 64 位）。超过一半有效位出错（float32 为 24 位中的 12 位，"
                     "float64 为 53 位中的 26.5 位），或损失、梯度非有限时，该形式即算失效。"),
    "check_reference": ("精确值（参照）是同一公式在 mpmath 中以 {dps} 位有效数字求值的结果；mpmath 的指数范围无界，"
                        "exp 在其中永不下溢。以自身公式为参照时，epsilon 补丁只显示其舍入误差；它本意要计算的是未打补丁的"
                        "损失，所以也以不加 epsilon 的精确损失为参照来度量（图中粗线；以自身公式为参照的是点线）。"),
    "check_unpatched": ("`{loss}` 在 {dtype} 中以不加 epsilon 的精确 `{unpatched}` 为参照：从 s = {scale} 起错误超过 "
                        "{threshold} 位（中位数 {bits} 位），而以自身公式为参照时它在 {own} 才失效。两者之差就是补丁带来的偏差。"),
    "check_unpatched_never": ("`{loss}` 在 {dtype} 中以不加 epsilon 的精确 `{unpatched}` 为参照：从 s = {scale} 起错误超过 "
                              "{threshold} 位（中位数 {bits} 位），而以自身公式为参照时直到 s = {high} 都不失效。"
                              "两者之差就是补丁带来的偏差。"),
    "h_homework": "{n}. 作业的问题：ModernNCA 与学生的代码有何不同，为何影响性能",
    "homework_intro": ("下面的研究在同一个固定划分上对每种配置每个种子各训练一次，使用 TALENT 的默认配置（没有调参）。"
                       "Δ 是测试准确率按种子配对之差的均值，方括号中是它的 95 % Student-t 置信区间；区间包含 0 表示这些种子"
                       "分辨不出该因素。"),
    "homework_source": "来自 {path}（{n_seeds} 个种子）：",
    "homework_gap": "ModernNCA 的测试准确率为 {modern} ± {modern_sd}，学生的 SeedNCA 用比值损失为 {student} ± {student_sd}。",
    "homework_step": "{id}，{label}：Δ {delta} [{low}, {high}]。",
    "homework_factor": "{id}，{change}：Δ {delta} [{low}, {high}]。",
    "homework_machine": "由 stablenca 提交 {code} 在 {cpus} 个 CPU、torch {torch} 上生成，{jobs} 个并行任务，每个单线程（开始于 {started}）。",
    "homework_machine_no_code": ("在 {cpus} 个 CPU、torch {torch} 上生成，{jobs} 个并行任务，每个单线程（开始于 {started}）；"
                                 "这项研究没有记录代码的提交（见其 study.md）。"),
    "homework_seed_same": ("它的种子 0 与本报告中的运行是同一次训练，测试准确率相同（研究用 torch {torch}；本报告用 torch "
                           "{diagnose_torch}，{threads} 个线程）："),
    "homework_seed_differs": ("它的种子 0 与本报告中的运行配置相同，结果却不同：训练结果取决于代码（训练器的随机数流）、"
                              "torch 版本和线程数（后两者都会改变浮点求和的顺序），而这项研究用的是 torch {torch}，"
                              "本报告用的是 torch {diagnose_torch}、{threads} 个线程："),
    "homework_seed_pair": "{row} 种子 0：测试准确率 {study}；{run}：{diagnose}。",
    "homework_caveat": ("TALENT 公布的数字来自它自己的划分，所以只是参照，不是配对比较：换一个划分，均值的变化比上面大多数"
                        "因素都大。"),
    "h_figures": "{n}. 图",
    "no_figures": "没有绘制任何图。",
    "figure_labels": ("图中的标签是英文（本机没有可用的中文字体）。对照："
                      "`loss` 损失，`gradient norm` 梯度范数，`grad norm` 梯度范数，`distance` 距离，`step` 步，"
                      "`epoch` 轮，`underflow` 下溢，`subnormal` 次正规数，`overflow` 上溢，`exact zero` 恰为零，"
                      "`finite` 有限，`non-finite` 非有限，`same-class` 同类，`other-class` 异类，`scale` 尺度，"
                      "`bits of error` 误差位数，`limit` 界限，`root cause` 根本原因，`chain` 链条，"
                      "`validation accuracy` 验证准确率，`best epoch` 最佳轮次（保留的检查点），`log space` 对数空间，"
                      "`early stopping` 早停。"),
    "figure_problems": "无法绘制的图：",
    "fig_timeline": ("图 {k}. `{run}`：每一步的损失、总梯度范数、距离尺度与 {dtype} 的 exp 界限 {normal} 和 {zero} 的对比、"
                     "下溢为 0.0 的 exp/softmax 输出个数、2b − a 最大的那一行的 2b − a 与 `ln(FLT_MAX)` = {ln_max} 的距离"
                     "（a = `−ln P_same`，b = `−ln P_diff`），以及每批最小的 `P_same` 与 `P_diff`（对数坐标）。"),
    "fig_gradients": "图 {k}. `{run}`：每个参数张量在每一步的梯度范数（对数色标）。",
    "fig_chain": "图 {k}. `{run}`：第一个非有限值的根本原因链。",
    "fig_domain": ("图 {k}. 比值损失及其梯度在何处为有限、+inf、−inf 或 NaN，坐标为 a = `−ln P_same` 与 b = `−ln P_diff`"
                   "（网格：每个查询只有一个同类近邻和一个异类近邻，a、b 即两段距离），分别在 float32 和 float64 中计算；"
                   "图上的点是比值损失运行中真实的行（同一行的 a 与 b）：2b − a 最大的行（按运行进度着色）、`P_same` 最小的行、"
                   "`P_diff` 最小的行；三条边界 a、2b − a、b − a = `ln(FLT_MAX)` 都已标出，负值不截断。"),
    "fig_check": ("图 {k}. 每种形式与数据类型的损失误差位数随距离尺度的变化（`stablenca check`）；`ratio_eps` 分别以精确的"
                  "比值损失（粗线）和自身公式（点线）为参照；顶行的 ×：损失非有限；○：损失有限而梯度非有限。"),
    "fig_sweep": ("图 {k}. 在失败那一步的批次上（float64），每种损失形式的损失及其推动力 `|dL/ds|` 随距离尺度 `s`"
                  "（1 = 该批距离的中位数）的变化：比值损失线性下降，推动力不减；NCA 的推动力在有限尺度处变号。"),
    "fig_comparison": ("图 {k}. ModernNCA 各运行的对比：每一步的距离中位数随（带小数的）轮次的变化（× 标出第一个非有限的步），"
                       "以及每轮的验证准确率（圆点：保留的检查点）。"),
    "fig_validation": "图 {k}. 每个分类运行每轮的验证准确率；圆点标出保留的（验证最佳的）那一轮，测试准确率用的就是它的参数。",
    "h_appendix": "附录：梯度热图与根本原因链条图",
}
