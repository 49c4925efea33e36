"""Measurement tools, apart from the model: the latency bench (`latency`, `measurements`, `instruments`,
`report`, `serving`, `encoder_window`, `scales`) and the load tests of the app and the study (`loadtest`,
`visitors`, `visitor_lines`, `app_process`, `load_report`, `study_load`).

None of it runs when the app serves; `python -m blsp_emo bench|loadtest` and `study loadtest` call it.
"""
