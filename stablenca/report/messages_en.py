"""The English messages of the diagnose report: message id → template (``str.format`` fields).

A message that refers to another one takes ``"@id"`` as a parameter (see :func:`.markdown.render`).
"""

EN: dict[str, str] = {
    "raw": "{text}",
    "title": "stablenca diagnose report",
    "intro": "Data: {data}; seed {seed}; {n_runs} runs. Every number below is read from this directory's "
             "`summary.json` and `<run>/records.jsonl` (one record per training batch); nothing was retrained "
             "to write this report.",
    "intro_command": "Command: `{command}`.",
    "interrupted": "**This diagnose was interrupted.** The report covers what was recorded before it stopped: "
                   "{n_recorded} runs have records, and {n_cut} runs are marked *interrupted* (they have no final "
                   "result, and their records may end mid-epoch).",
    "no_runs": "No run was recorded in this directory.",
    "no_records": "`{run}`: no records were written.",
    "not_run": "`{loss}`: not run.",
    "h_short": "In short",
    "short_failed": "`{run}` went non-finite at step {step}: first bad op `{op}` ({phase}), root cause `{kind}` at `{root_op}`.",
    "short_finite": "`{run}` ({status}): {n_finite} of {n_steps} recorded steps finite.",
    "short_interrupted": "`{run}` was interrupted after {n_steps} recorded steps.",
    "short_zero": "Its first exact 0.0 from `exp`/softmax was at step {step}.",
    "short_no_zero": "No `exp`/softmax output was ever exactly 0.0.",
    "h_runs": "{n}. The runs",
    "col_run": "run", "col_model": "model", "col_loss": "loss", "col_dtype": "dtype", "col_status": "status",
    "col_steps": "recorded steps", "col_first": "first non-finite", "col_root": "root cause",
    "col_acc": "test accuracy", "col_breakdown": "breakdown scale", "col_reason": "why",
    "col_finite": "finite fraction", "col_bits": "bits of error (median / max)",
    "cell_first": "step {step}: `{op}` ({phase})",
    "cell_none": "none",
    "runs_note": ("A step whose loss or gradient is not finite is never applied: the run stops there. Test accuracy "
                  "is that of the kept checkpoint: under the ModernNCA protocol the epoch with the best validation "
                  "accuracy (for a diverged run an epoch before the failure), under the student's protocol, which "
                  "keeps no checkpoint, the last finite parameters. Steps and epochs are counted from 0, as in the "
                  "records."),
    "status_completed": "completed", "status_early_stopped": "early stopped", "status_diverged": "diverged",
    "status_interrupted": "interrupted",
    "phase_forward": "forward", "phase_backward": "backward", "phase_optimizer": "optimizer",
    "phase_unknown": "unknown phase",
    "h_ratio": "{n}. The ratio loss is unbounded below, so training inflates the distances",
    "ratio_formula": "The student's loss is `−log(P_same / P_diff)` with `P = exp(−d/T)`, where `P_same` sums over "
                     "the query's own class and `P_diff` over the *other* classes only. Because the denominator "
                     "leaves the own class out, `P_same / P_diff` is not a probability: it can exceed 1, so the loss "
                     "can drop below 0 and has no lower bound. With one same-class neighbour at distance `a` and one "
                     "other-class neighbour at `b` the loss is `a − b`, and multiplying every distance by `s` "
                     "multiplies the loss by `s`. Once queries sit nearer to their own class than to the others, "
                     "the cheapest way to lower the loss further is to blow up the distance scale.",
    "ratio_logit": ("With `p = P_same / (P_same + P_diff)` the ratio loss is `−log p + log(1 − p) = −logit(p)`. NCA's "
                    "`−log p` also falls as the scale grows on rows that are already right, but that gain decays "
                    "exponentially and misclassified rows push back, so it has a finite optimum; the ratio loss "
                    "falls *linearly* in the scale and its push never weakens (worked out in `docs/exercises.md`, "
                    "exercise 2)."),
    "ratio_loss": "In `{run}` the loss went from {loss0} (step {step0}) to {loss_min} (step {loss_min_step}); "
                  "{n_negative} of its {n_steps} recorded steps had a negative loss, which a true NCA loss "
                  "(`−log p`, `p ≤ 1`) never gives.",
    "ratio_dmax": "Meanwhile the largest distance `d_max` grew from {d0} (step {step0}) to {dpeak} "
                  "(step {dpeak_step}), a factor of {factor}.",
    "ratio_growth": "`{key}`: {a} (step {a_step}) → {b} (step {b_step}).",
    "ratio_pdiff": "The smallest other-class sum of a row, `P_diff`, went from {a} (step {a_step}) down to {low} "
                   "(step {low_step}).",
    "ratio_see_figures": "The timeline and failure-domain figures below show these series step by step.",
    "h_underflow": "{n}. Did the distances cross the exp underflow limit?",
    "limits": "In {dtype}, `exp(−d)` leaves the normal range for `d > {normal}` (it turns subnormal and loses "
              "precision) and rounds to exactly 0.0 for `d > {zero}`. These are constants of IEEE floating point, "
              "not of the model; the distances here are already divided by the temperature T.",
    "limits_other": "(For comparison, in {dtype} the limits are {normal} and {zero}.)",
    "underflow_yes": "`{run}`: **yes**. The first exact 0.0 appeared at step {step} (epoch {epoch}): {count} `{key}` "
                     "entries were 0.0 while `d_max` was {dmax}. The count peaked at {peak} per batch "
                     "(step {peak_step}).",
    "underflow_no_below": "`{run}`: **no**. No output was exactly 0.0 in its {n_steps} recorded steps (`{key}` = 0 "
                          "throughout); `d_max` peaked at {dmax} (step {dmax_step}), below the subnormal limit "
                          "{normal}.",
    "underflow_no_above": "`{run}`: **no exact zero**. No output was exactly 0.0 in its {n_steps} recorded steps "
                          "(`{key}` = 0 throughout), although `d_max` peaked at {dmax} (step {dmax_step}), above "
                          "the subnormal limit {normal}.",
    "underflow_unknown": "`{run}`: this loss publishes no `exp` or softmax outputs, so underflow was not counted; "
                         "`d_max` peaked at {dmax} (step {dmax_step}) against the limit {zero}.",
    "subnormal_first": "Subnormal outputs first appeared at step {step} (`d_max` {dmax}).",
    "crossed_zero": "`d_max` first exceeded {zero} at step {step} ({dmax}).",
    "at_failure_p": "At the failing step {step}: `d_max` = {dmax}, smallest `P_same` = {psame}, smallest "
                    "`P_diff` = {pdiff}.",
    "at_failure": "At the failing step {step}: `d_max` = {dmax}.",
    "h_failure": "{n}. How the first non-finite value appeared",
    "no_failure": "None of the {n_runs} runs produced a non-finite loss or gradient.",
    "failure_head": "`{run}`, step {step} (epoch {epoch}): the first op that made NaN/inf out of finite inputs was "
                    "`{op}` in the **{phase_word}** pass{node}, at `{source}`. Pattern `{pattern}`; root cause "
                    "`{kind}` at `{root_op}`: `{detail}`.",
    "explain_backward_overflow": ("The forward loss of that step was still finite ({loss}). `DivBackward0` computes the "
                                 "gradient for `P_diff` as `−grad · ((P_same / P_diff) / P_diff)`: with `a = −ln P_same` "
                                 "and `b = −ln P_diff` the intermediate `(P_same / P_diff) / P_diff = e^(2b − a)` is "
                                 "formed before the tiny `grad` multiplies it, so it overflows once `2b − a` exceeds "
                                 "`ln({fmax})` = {ln_max}, although the product, the exact gradient, is finite. The "
                                 "traced division had numerators up to {big} and divisors as small as {small}."),
    "explain_backward_overflow_short": "The forward loss of that step was still finite ({loss}); the backward pass "
                                       "divides by the small sums once more, and a quotient exceeded the largest "
                                       "{dtype} number {fmax}.",
    "failure_verified": "Counterfactual replay (`stablenca.trace.verify`): {statement}.",
    "failure_precursor": "In the forward pass of that same step {count} outputs counted by `{key}` had already "
                         "underflowed to exactly 0.0 without any error; the first such step was {first}. Those "
                         "silent zeros removed terms from the sums and pushed `P_diff` towards 0.",
    "failure_no_precursor": "No output had underflowed to exactly 0.0 at that step (`{key}` = 0): a tiny but "
                            "non-zero `P_diff`, from a row whose other classes are all far away, was enough.",
    "explain_forward_overflow": "A finite value exceeded the largest {dtype} number {fmax} in the forward pass.",
    "explain_nan": "Some row had `P_same` and `P_diff` both exactly 0.0, so `P_same / P_diff` = 0/0 = NaN: every "
                   "`exp(−d)` of that row had underflowed.",
    "explain_xdiv0": "Some row had `P_diff` exactly 0.0 (every other-class term underflowed) while `P_same > 0`, so "
                     "the ratio is +inf and the loss −inf.",
    "explain_log0": "Some row had `P_same` exactly 0.0 (every same-class term underflowed, or the row has no "
                    "same-class neighbour), so `log(0)` = −inf and the loss is +inf.",
    "explain_infinf": "Two infinities of opposite sign met in an addition (`inf − inf` = NaN).",
    "explain_zeroinf": "A zero met an infinity in a product (`0 × inf` = NaN).",
    "explain_generic": "The tracer classified it as `{pattern}`.",
    "root_underflow": "The root cause is earlier and silent: `{root_op}` turned finite inputs into exact zeros, and "
                      "those zeros reached the failing op.",
    "root_empty_set": "The root cause is a sum over nothing at `{root_op}`: a mask selected no element, as for a "
                      "query that is the only member of its class in the batch.",
    "root_cancellation": "The root cause is a cancellation at `{root_op}`: a subtraction of nearly equal numbers "
                         "lost most of its significant bits.",
    "root_nonfinite_input": "The NaN/inf was already in an input or a parameter (`{root_op}`).",
    "root_domain": "`{root_op}` was evaluated outside its domain.",
    "root_division_by_zero": "An exact zero that was an input value reached a pole at `{root_op}`.",
    "chain_intro": "The traced chain (first non-finite op first, `←` points to its cause):",
    "replay": "Replay that step under the tracer with `stablenca replay {capsule}`.",
    "h_singleton": "{n}. A class with a single member in the batch gives log(0) at once",
    "singleton_formula": "For a query that is the only member of its class in the batch, `P_same` is an empty sum: "
                         "exactly 0 at every distance scale, so `−log(0 / P_diff)` = +inf from the first step on, "
                         "with no scale growth needed.",
    "singleton_seen": "`{run}` (`{loss}`): {count} rows without a same-class neighbour first appeared at step "
                      "{step} (loss there: {loss_at}); at most {peak} in one batch.",
    "singleton_not_seen": "Not seen in this run: `rows_without_same_class` was 0 in all {n_steps} recorded steps of "
                          "the {n_runs} runs that record it (batch size {sizes}).",
    "singleton_not_recorded": "Not recorded in this run (no loss published the class masks).",
    "singleton_logspace": "`{run}` excludes such rows instead of turning them into inf: {excluded} rows were "
                          "excluded over its run.",
    "h_eps": "{n}. The epsilon patch (`ratio_eps`) hides the failure",
    "eps_run": "`{run}` ({status}, {n_steps} recorded steps): the loss was finite in {n_finite} of {n_steps} steps, "
               "between {loss_min} and {loss_max}.",
    "eps_zeros": "Yet `exp` did underflow: exact zeros first at step {step}, up to {peak} per batch "
                 "(step {peak_step}).",
    "eps_no_zeros": "`exp` returned no exact zero in its {n_steps} recorded steps.",
    "eps_small": "The smallest `P_same` of a row reached {psame} (step {psame_step}) and the smallest `P_diff` "
                 "{pdiff} (step {pdiff_step}).",
    "eps_formula": ("The patch, exactly as the student wrote it, adds `{eps}` to both sums and once more to the "
                    "divisor: `−log((P_same + {eps}) / (P_diff + {eps} + {eps}))`. It bounds the loss, but a sum far "
                    "below `{eps}` no longer counts: the loss saturates (at log 2 once both sums are 0), and the "
                    "gradient of `log(P + c)` is `P′ / (P + c)` instead of `P′ / P`, smaller by the factor "
                    "`P / (P + c)` (c = `{eps}` for `P_same`, twice that for `P_diff`)."),
    "eps_below": "In {n_below} of {n_steps} recorded steps some row had `P_same` or `P_diff` below `{eps}`.",
    "eps_bias": "At the smallest non-zero recorded sum, {p}, that factor is {factor}.",
    "eps_exact_zero": "In {n_zero} steps a sum was exactly 0.0 in some row: there the gradient through that sum is "
                      "exactly 0.",
    "eps_dead": ("In {n_dead} steps the gradient was exactly 0: every row's sums had underflowed, the loss sat at "
                 "log 2, and training silently stopped."),
    "eps_conclusion": "The NaN is gone, but the rows whose sums underflowed get a biased (vanishing) gradient, and "
                      "nothing in the loss tells you so; only the records do.",
    "h_difference": "{n}. The difference loss stays finite, but far pairs stop learning",
    "difference_formula": "`P_diff.sum() − P_same.sum()` is a bounded sum of `exp(−d)` terms and never NaN. Its "
                          "derivative with respect to a pair's distance is `±exp(−d)`, so a pair contributes in "
                          "proportion to `exp(−d)`: far pairs contribute (almost) nothing.",
    "difference_run": "`{run}` ({status}): {n_finite} of {n_steps} recorded steps were finite.",
    "difference_weight": "At its largest recorded distance {dmax} (step {step}) a pair's gradient weight "
                         "`exp(−d)` is {weight}.",
    "difference_weight_zero": "In {dtype} that is exactly 0.0 (beyond {zero}).",
    "difference_zeros": "`exp` outputs that were exactly 0.0, i.e. pairs with an exactly zero gradient, first "
                        "appeared at step {step} and reached {peak} per batch (step {peak_step}).",
    "difference_no_zeros": "No `exp` output was exactly 0.0.",
    "difference_grad": "The total gradient norm was {g0} at step {s0}, {g1} at step {s1} and {glow} at its "
                       "smallest (step {slow}): the loss is a sum over the batch, so the near pairs keep it large "
                       "while the far ones drop out.",
    "h_stable": "{n}. The log-space form and TALENT's softmax form stay finite",
    "stable_formula": ("`nca_logspace` uses `logsumexp(x) = m + log Σ exp(x − m)` with `m = max x`, and TALENT's "
                      "`softmax` shifts by the row maximum in the same way. The largest term is then `exp(0) = 1`, "
                      "so the sum is at least 1 and its log is finite at any distance scale; terms far below the "
                      "maximum may still underflow to 0.0, which only drops their negligible share. Their "
                      "denominator includes the own class, so the loss is `−log p` with `p ≤ 1`: bounded below by 0. "
                      "A larger scale still lowers it a little on rows that are already right, but that gain decays "
                      "exponentially and misclassified rows push back, so the scale settles."),
    "stable_run": "`{run}` ({status}): {n_finite} of {n_steps} recorded steps finite; `d_max` peaked at {dmax}; "
                  "test accuracy {acc}.",
    "stable_softmax_zero": "Softmax entries underflowed to 0.0 in {n} steps (up to {peak} per batch), yet the loss "
                           "stayed finite.",
    "stable_softmax_none": "No softmax entry underflowed to 0.0.",
    "stable_beyond": "Its distances reached {dmax}, beyond the exp limit {zero}, without harm.",
    "h_check": "{n}. Error versus distance scale (`stablenca check`)",
    "check_intro": "Swept on generated batches, every formulation and dtype: the smallest scale where it breaks "
                   "(non-finite, or more than half of the significand bits wrong) and its bits of error.",
    "check_scale": ("The scale s: each generated batch puts every row's nearest same-class and nearest other-class "
                    "distance (already divided by the temperature, so the argument of exp) in [s, 1.25 s]; s runs "
                    "from {low} to {high}, {per_decade} points per decade. The sums then hold terms near exp(−s): in "
                    "{dtype} exp(−s) is subnormal beyond s = {normal} and exactly 0.0 beyond {zero}."),
    "check_metric": ("The metric is Herbie's bits of error: log2(1 + the distance, in units in the last place of the "
                     "dtype, between the computed loss and the exact loss rounded to that dtype). 0 means correctly "
                     "rounded, each further wrong bit doubles the distance, and it reaches the storage width (32 bits "
                     "for float32, 64 for float64) when the result is as far off as a float can be: a finite value "
                     "against an infinite one, or 0 against a non-zero value. A formulation breaks where more than "
                     "half of its significand bits are wrong (12 of 24 in float32, 26.5 of 53 in float64), or where "
                     "the loss or the gradient is non-finite."),
    "check_reference": ("The exact value (the reference) is the same formula evaluated in mpmath with {dps} "
                        "significant digits; mpmath's exponent range is unbounded, so exp never underflows there. "
                        "Against its own formula an epsilon patch shows only its rounding; what it is meant to "
                        "compute is the unpatched loss, so it is also measured against the exact loss without "
                        "epsilon (the thick line in the figure; its own formula is the dotted line)."),
    "check_unpatched": ("`{loss}` in {dtype} against the exact `{unpatched}` (no epsilon): more than {threshold} bits "
                        "wrong from s = {scale} ({bits} bits at the median), while against its own formula it breaks "
                        "at {own}. That gap is the bias the patch adds."),
    "check_unpatched_never": ("`{loss}` in {dtype} against the exact `{unpatched}` (no epsilon): more than {threshold} "
                              "bits wrong from s = {scale} ({bits} bits at the median), while against its own formula "
                              "it never breaks up to s = {high}. That gap is the bias the patch adds."),
    "h_homework": "{n}. The homework's question: how ModernNCA and the student's code differ, and why it matters",
    "homework_intro": ("The studies below train every configuration once per seed on one fixed split, with TALENT's "
                       "default configuration (nothing tuned). Δ is the mean paired per-seed difference in test "
                       "accuracy, in brackets its 95 % Student-t interval; an interval that contains 0 is not "
                       "resolved by these seeds."),
    "homework_source": "From {path} ({n_seeds} seeds):",
    "homework_gap": ("ModernNCA reaches {modern} ± {modern_sd} test accuracy, the student's SeedNCA with the ratio "
                     "loss {student} ± {student_sd}."),
    "homework_step": "{id}, {label}: Δ {delta} [{low}, {high}].",
    "homework_factor": "{id}, {change}: Δ {delta} [{low}, {high}].",
    "homework_machine": ("Made with stablenca at commit {code} on {cpus} CPUs, torch {torch}, {jobs} parallel job(s) "
                         "of one thread (started {started})."),
    "homework_machine_no_code": ("Made on {cpus} CPUs, torch {torch}, {jobs} parallel job(s) of one thread (started "
                                 "{started}); this study did not record its code commit (see its study.md)."),
    "homework_seed_same": ("Its seed 0 is the same training as runs of this report and gives the same test accuracy "
                           "(study torch {torch}; this report torch {diagnose_torch}, {threads} thread(s)):"),
    "homework_seed_differs": ("Its seed 0 is the same configuration as runs of this report, yet the numbers differ: "
                              "a training result depends on the code (the trainer's random stream), on the torch "
                              "version and on the thread count (both change the order of floating-point sums), and "
                              "this study ran with torch {torch} while this report ran with torch {diagnose_torch}, "
                              "{threads} thread(s):"),
    "homework_seed_pair": "{row} seed 0: test accuracy {study}; {run}: {diagnose}.",
    "homework_caveat": ("TALENT's published numbers come from its own split, so they are a reference point, not a "
                        "paired comparison: a different split moves the mean by more than most factors above."),
    "h_figures": "{n}. Figures",
    "no_figures": "No figure was drawn.",
    "figure_labels": "The figures are labelled in English.",
    "figure_problems": "Figures that could not be drawn:",
    "fig_timeline": ("Figure {k}. `{run}`: loss, total gradient norm, distance scale against the {dtype} exp limits "
                     "{normal} and {zero}, the exp/softmax outputs that underflowed to 0.0, the margin of 2b − a "
                     "(a = −ln P_same, b = −ln P_diff, the batch's row where 2b − a is largest) to ln(FLT_MAX) = "
                     "{ln_max}, and the smallest P_same and P_diff of each batch (log), per step."),
    "fig_gradients": "Figure {k}. `{run}`: gradient norm of every parameter tensor per step (log colour).",
    "fig_chain": "Figure {k}. `{run}`: the root-cause chain of the first non-finite value.",
    "fig_domain": ("Figure {k}. Where the ratio loss and its gradient are finite, +inf, −inf or NaN, in a = −ln P_same "
                   "and b = −ln P_diff (grid: one query with one same-class and one other-class neighbour, so a and b "
                   "are the two distances), in float32 and float64; the points are real rows of the ratio runs' "
                   "batches (a and b of one row): the row with the largest 2b − a (coloured by progress), the row "
                   "with the smallest P_same and the row with the smallest P_diff. The boundaries a, 2b − a and "
                   "b − a = ln(FLT_MAX) are labelled; negative values are not clipped."),
    "fig_check": ("Figure {k}. Bits of error of the loss against the distance scale for every formulation and "
                  "dtype (`stablenca check`); `ratio_eps` is drawn against the exact ratio loss (thick) and against "
                  "its own formula (dotted); × on the top row: non-finite loss; ○: finite loss, non-finite "
                  "gradient."),
    "fig_sweep": ("Figure {k}. The loss and its push `|dL/ds|` against the distance scale `s` (1 = the batch's "
                  "median distance) on the failing step's batch, in float64, for every formulation: the ratio loss "
                  "falls linearly and its push stays; NCA's push changes sign at a finite scale."),
    "fig_comparison": ("Figure {k}. The ModernNCA runs side by side: median distance per step against fractional "
                       "epochs (× marks the first non-finite step) and validation accuracy per epoch (dot: the kept "
                       "checkpoint)."),
    "fig_validation": ("Figure {k}. Validation accuracy by epoch for every classification run; the dot marks the "
                       "kept (best-validation) epoch, whose parameters give the test accuracy."),
    "h_appendix": "Appendix: gradient heatmaps and root-cause chain diagrams",
}
