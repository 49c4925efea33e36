"""Everything that imports Gradio: the page (`demo_page` builds it from the tabs in `demo_tabs`, whose
handlers and per-visitor state are in `callbacks`), the study tabs (`study_tabs`, with the scripted
raters' endpoints in `study_api`), the queue (`waking_queue`), what the page keeps on disk and for
how long (`storage`) and the pictures in docs/ (`screenshots`). `blsp_emo` never imports this package."""
