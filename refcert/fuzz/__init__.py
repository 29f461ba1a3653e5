"""Differential fuzzing of neural-network verifiers (``refcert fuzz``).

``cases`` draws small random networks with the quirks of real benchmark files and properties near the
decision boundary, with answers from the exact MILP oracle; ``quirks`` writes their ONNX files;
``adapters`` run a verifier (a command template, Marabou, ``refcert verify``); ``runner`` classifies each
answer (correct / unsound / bad-counterexample / incomplete / crash), shrinks failures and summarises.
"""
