"""qa_lib: the library behind the BERT extractive-QA teaching kit (CMRC 2018).

Each module holds one concept and names the notebook section that teaches it:

- data      -- loading SQuAD-style JSON, answer validation and repair   (notebook 1, section 1)
- features  -- tokenisation, char->token conversion, sliding windows    (notebook 1 s.2, notebook 2 s.1)
- decoding  -- argmax decoding, best valid span, n-best across windows  (notebook 1 s.4, notebook 2 s.2)
- metric    -- the official CMRC 2018 EM/F1                             (notebook 1 s.5)
- models    -- tokenizer/model loading, offline tokenizer, tiny config  (notebook 1 s.0)
- training  -- the Accelerate AMP training loop and presets             (notebook 1 s.3)
- predict   -- answer() for contexts of any length, batch prediction    (notebook 1 s.5, notebook 2 s.1)
- batching  -- dataset, dynamic padding, length-grouped batches          (notebook 1 s.3)
- checkpoint -- resumable checkpoints without pickles                   (notebook 1 s.3)
- wwm       -- Chinese whole word masking: jieba word ids, collator     (notebook 2 s.3)
- pretraining -- continued MLM pretraining through the training loop    (notebook 2 s.3)
- plots     -- learning curves, length histogram, start/end probabilities
- course    -- course tooling, not part of the pipeline: grading (nbgrader helpers, instructors),
               demo (`make demo`), synthetic (offline Chinese QA generator)
- cli       -- the `qa-kit` command
"""

__version__ = "0.1.0"
