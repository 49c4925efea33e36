"""Serving the systems to concurrent visitors: model worker processes (`workers`), the pool the page's
process holds (`pool`) and the messages between them (`protocol`). Neither `pool` nor `protocol`
imports torch, so the page's process starts without the model code."""
