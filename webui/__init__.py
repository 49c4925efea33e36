"""Everything that imports Gradio: the page (`demo_page` builds it from the tabs in `demo_tabs`, whose
handlers and per-visitor state are in `callbacks`), the study tabs (`study_tabs`, with the scripted
raters' endpoints in `study_api`) and the queue (`waking_queue`). `blsp_emo` never imports this package."""
