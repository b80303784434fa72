"""Course tooling around the QA pipeline: graded notebooks and their grading, the offline demo, synthetic data.

The QA pipeline itself (``qa_lib.data`` … ``qa_lib.predict``) does not import this package.
"""

import sys

# jsonschema imports rfc3987_syntax, when installed (jupyter_events' extras install it), to check the "iri" string
# format, and that module compiles a Lark grammar as it loads: 1.8 s of CPU in every process that imports nbformat
# (the qa-kit command, each grading worker). No schema the course tooling validates (notebooks, nbgrader's) has a
# format check, so its processes skip that import; one that has already made it keeps it.
sys.modules.setdefault("rfc3987_syntax", None)
