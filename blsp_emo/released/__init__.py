"""The released BLSP-Emo checkpoint (`cwang621/blsp-emo`) read into this package's classes, without its code.

`convert` maps its weights and config (docs/paper.md §7, §8); `qwen_tokenizer` rebuilds Qwen v1's tokenizer.
"""
