"""Anatomical (T1w) processing: bias-field correction, template-based brain extraction,
tissue partial-volume maps, nonlinear registration to the template and the unbiased
within-subject T1w template (issue 19).  Registration, N4 and Atropos come from ANTsPy
(PyPI ``antspyx``); see ``docs/anatomy.md`` for the measurements behind that choice."""
