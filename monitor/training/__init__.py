"""Pre-training EXAM: which media belong to which identity (``corpus``) and the training
loop, window sampling and checkpoint finalisation (``train``); self-blended pseudo-fakes
for the appearance embedding (``sbi``).

May import: features, model
"""
