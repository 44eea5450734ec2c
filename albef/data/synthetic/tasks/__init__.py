"""Downstream fine-tuning tasks in the synthetic shapes world (:mod:`albef.data.synthetic.scenes`).

Each task is generated next to a complete pretraining dataset ``root`` (made by
:func:`~albef.data.synthetic.shapes.generate_synthetic`), with the same palette and image
size, and its texts use only words that the pretraining vocabulary ``root/vocab.txt``
tokenises without ``[UNK]`` (a model pretrained on ``root`` is fine-tuned on them), into
``root/<task>/`` (:func:`~.generate.generate_task_data`)::

    root/retrieval/   :mod:`.retrieval`  image-text retrieval, minimal-pair val/test
    root/ve/          :mod:`.ve`         visual entailment, one statement per label and image
    root/nlvr/        :mod:`.nlvr`       a sentence about a pair of pictures, True / False
    root/vqa/         :mod:`.vqa`        questions with 10 annotator answers
    root/grounding/   :mod:`.grounding`  referring expressions, boxes of every object
    root/<task>/manifest.json  format version, params (incl. the pretraining params),
                               counts, label counts (ve, nlvr), and the scene(s) of every entry

A scene is ``(colour1, shape1, relation, colour2, shape2)`` as in :mod:`albef.data.synthetic.scenes`; every
text is derived from the scene(s) of its image(s) and is literally true or false of them
as labelled.  The manifest stores, per split, ``scenes[split][i]``: the canonical scene of
entry ``i`` (retrieval, ve, vqa, grounding) or the ``[left, right]`` scenes (nlvr), and ``kinds[split][i]``,
how the text was made.

:mod:`.common` holds what the builders share, :mod:`.vocabulary` the words of the texts
and their check against the pretraining vocabulary, :mod:`.generate` the directory build.
"""
