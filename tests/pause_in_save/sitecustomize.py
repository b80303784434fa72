"""Python loads this at start-up when tests put its folder on PYTHONPATH (tests/test_checkpoint.py).

A training process whose ``QA_KIT_TEST_PAUSE_SAVE`` names a checkpoint (``step-4``) holds that save half-way, its
files written but its manifest not yet, until the test deletes the file ``save-paused`` that it creates next to the
checkpoints: the test can then kill or interrupt it in the middle of a save.
"""

import os

if os.environ.get("QA_KIT_TEST_PAUSE_SAVE"):
    import time

    from qa_lib import checkpoint

    write_manifest = checkpoint.write_manifest

    def write_manifest_after_a_pause(folder, step):
        if folder.name == checkpoint.INCOMPLETE_PREFIX + os.environ["QA_KIT_TEST_PAUSE_SAVE"]:
            marker = folder.parent / "save-paused"
            marker.touch()
            while marker.exists():
                time.sleep(0.05)
        write_manifest(folder, step)

    checkpoint.write_manifest = write_manifest_after_a_pause
