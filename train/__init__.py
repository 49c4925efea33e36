"""The BLSP-Emo training pipeline: teacher continuations, cleaning, and the two alignment stages.

`python -m train --help` lists the commands. Depends on `blsp_emo`; `blsp_emo` never imports this.
"""
