"""Where users train: the watch inside mixed precision, torch.compile, Lightning, TensorBoard and DDP.

* :mod:`stablenca.runtime.watcher` itself understands ``torch.autocast`` + ``torch.amp.GradScaler``
  (skipped steps), compiled modules (eager replay) and ``torch.distributed`` (one flag
  all-reduce per step, see :mod:`.distributed`).
* :mod:`.lightning`: a Lightning ``Callback`` (extra ``stablenca[lightning]``).
* :mod:`.tensorboard`: per-batch records as TensorBoard scalars (extra ``stablenca[tensorboard]``).
* :mod:`.precision`: the float32 counterfactual of a half-precision step.
"""
