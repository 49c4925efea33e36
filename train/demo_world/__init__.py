"""The synthetic demo world: sentences, speakers and emotional speech made here, the small bases
pretrained on them, and `demo`, which rebuilds every bundled checkpoint (`python -m train demo`).

The paper's recipe itself (stages, loop, data, teacher, clean) lives one level up, in `train/`.
"""
