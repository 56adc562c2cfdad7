"""Pre-training EXAM: which media belong to which identity (``corpus``) and the training
loop, window sampling and checkpoint finalisation (``train``).

May import: features, model
"""
