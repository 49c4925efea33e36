"""The synthetic demo world: sentences, speakers and emotional speech made here, the small bases
pretrained on them (`python -m train demo-scratch`), and the bundled models on pretrained bases
(`bases_build.py`, `python -m train demo`).

The paper's recipe itself (stages, loop, data, teacher, clean) lives one level up, in `train/`.
"""
