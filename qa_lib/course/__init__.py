"""Course tooling around the QA pipeline: graded notebooks and their grading, the offline demo, synthetic data.

The QA pipeline itself (``qa_lib.data`` … ``qa_lib.predict``) does not import this package.
"""
