"""Everything that imports Gradio: the page (`demo_page`), the study tabs (`study_tabs`) and the queue
(`waking_queue`). `blsp_emo` never imports this package."""
