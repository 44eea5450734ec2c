"""The browser demo: a Gradio Blocks page on a loaded model (``tools/demo.py``).

Tabs: **Image and text** (ITC similarity, ITC probability and ITM match probability of each
text, and the per-word ITM Grad-CAM of one of them), **VQA** (``model.heads.answer``),
**Entailment / NLVR2** (``model.heads.cls``) and **Search** (with an image index). A tab
whose head the checkpoint lacks says which checkpoint it needs. Every event goes through a
``on_*`` function of this module: it calls :class:`~albef.demo.predictor.DemoPredictor` and
turns a :class:`~albef.demo.predictor.DemoInputError` into a warning toast and a status line
(never a traceback); these functions are plain Python, testable without a browser.

API routes (``gradio_client.Client(url).predict(..., api_name=...)``): ``/scores`` (image,
texts) -> (score table, status), ``/gradcam`` (image, texts, line, layer) -> (gallery,
status), ``/vqa``, ``/classify``, ``/search``.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

from albef.data.synthetic.scenes import COLORS
from albef.demo.examples import Example, probe_texts
from albef.demo.predictor import SCORE_COLUMNS, DemoInputError, DemoPredictor


def _gradio():
    try:
        import gradio as gr
    except ImportError as e:
        raise ImportError("gradio is not installed: pip install 'albef[demo]'") from e
    return gr


def _warn(message: str) -> str:
    """Show ``message`` as a warning toast (inside a request) and return it as the status line."""
    _gradio().Warning(message)
    return f"**Error:** {message}"


def _table(rows: list[list[Any]], columns: Sequence[str]):
    import pandas as pd

    return pd.DataFrame(rows, columns=list(columns))


# ---------------------------------------------------------------------------- event functions
def on_scores(predictor: DemoPredictor, image: Any, texts: str):
    """(score table, status) of the "Image and text" tab's submit."""
    try:
        rows = predictor.scores(image, texts)
    except DemoInputError as e:
        return _table([], SCORE_COLUMNS), _warn(str(e))
    best = max(rows, key=lambda r: (r[3] if r[3] is not None else r[1]))
    return _table(rows, SCORE_COLUMNS), f"Scored {len(rows)} text(s); best match: *{best[0]}*."


def on_gradcam(predictor: DemoPredictor, image: Any, texts: str, line: Any, layer: Any):
    """(gallery items, status) of the per-word Grad-CAM; silent when scoring already said the
    input is missing (no image, no text), so one mistake gives one warning."""
    if image is None or not (texts or "").strip():
        return [], ""
    try:
        items, text, score = predictor.word_overlays(image, texts, line, layer)
    except DemoInputError as e:
        return [], _warn(str(e))
    layer = predictor.gradcam_layer if layer is None else int(layer)
    return items, f"ITM Grad-CAM of *{text}* (fusion layer {layer} cross-attention), p(match) = {score:.3f}."


def on_vqa(predictor: DemoPredictor, image: Any, question: str):
    """(answer, ranked-candidates table, status) of the VQA tab."""
    try:
        answer, rows = predictor.answer(image, question)
    except DemoInputError as e:
        return "", _table([], ("answer", "log-likelihood")), _warn(str(e))
    how = "ranked from the answer list" if rows else "generated (no answer list)"
    return answer, _table(rows, ("answer", "log-likelihood")), f"Answer {how}."


def on_classify(predictor: DemoPredictor, image: Any, text: str, image2: Any = None):
    """(class-probability table, status) of the Entailment / NLVR2 tab."""
    try:
        rows = predictor.classify(image, text, image2)
    except DemoInputError as e:
        return _table([], ("class", "probability")), _warn(str(e))
    return _table(rows, ("class", "probability")), f"Prediction: **{rows[0][0]}** ({rows[0][1]:.3f})."


def on_search(predictor: DemoPredictor, text: str, k: Any, rerank: bool = False):
    """(gallery of hits, status) of the Search tab."""
    try:
        hits = predictor.search(text, k, rerank)
    except DemoInputError as e:
        return [], _warn(str(e))
    return hits, f"{len(hits)} image(s) for *{text.strip()}*."


# ---------------------------------------------------------------------------- the page
def example_rows(examples: Sequence[Example], colours: Sequence[str]) -> list[list[str]]:
    """[image path, prefilled texts] of each example (the probe texts of its first caption)."""
    return [[e.image, "\n".join(probe_texts(e.captions[0], colours)) if e.captions else ""] for e in examples]


def build_app(predictor: DemoPredictor, examples: Sequence[Example] = (), colours: Sequence[str] | None = None,
              title: str = "ALBEF demo"):
    """The Gradio Blocks page (not launched). ``colours``: the world's colour names for the
    examples' wrong-colour captions (default: the built-in synthetic colours)."""
    gr = _gradio()
    rows = example_rows(examples, colours or list(COLORS))
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"## {title}\n{predictor.describe()}", elem_id="header")
        with gr.Tabs():
            with gr.Tab("Image and text", id="match"):
                if predictor.visual_inputs == 1:
                    _match_tab(gr, predictor, rows)
                else:
                    gr.Markdown(f"**This checkpoint reads {predictor.visual_inputs} images per text (NLVR2)**: it scores "
                                f"sentences about image pairs in the Entailment / NLVR2 tab, not single image-text pairs.",
                                elem_id="match-status")
            with gr.Tab("VQA", id="vqa"):
                if predictor.has("answer"):
                    _vqa_tab(gr, predictor, rows)
                else:
                    gr.Markdown(predictor.missing_head_message("answer"), elem_id="vqa-status")
            with gr.Tab("Entailment / NLVR2", id="classify"):
                if predictor.has("cls"):
                    _classify_tab(gr, predictor, rows)
                else:
                    gr.Markdown(predictor.missing_head_message("cls"), elem_id="classify-status")
            if predictor.index is not None:
                with gr.Tab("Search", id="search"):
                    _search_tab(gr, predictor)
    return app


def _match_tab(gr, predictor: DemoPredictor, rows) -> None:
    with gr.Row():
        with gr.Column():
            image = gr.Image(type="pil", label="Image", sources=["upload", "clipboard"], elem_id="match-image", height=280)
            texts = gr.Textbox(lines=4, label="Texts, one per line", elem_id="match-texts",
                               placeholder="a red circle left of a blue square")
            with gr.Row():
                line = gr.Number(1, precision=0, minimum=1, label="Grad-CAM of text line", elem_id="match-line")
                layer = gr.Number(predictor.gradcam_layer, precision=0, minimum=0, maximum=predictor.num_fusion_layers - 1,
                                  label="Grad-CAM fusion layer", elem_id="match-layer")
            with gr.Row():
                submit = gr.Button("Score", variant="primary", elem_id="match-submit")
                explain = gr.Button("Grad-CAM only", elem_id="match-explain")
        with gr.Column():
            status = gr.Markdown(elem_id="match-status")
            table = gr.Dataframe(headers=list(SCORE_COLUMNS), label="Scores", interactive=False, elem_id="match-scores", wrap=True,
                                 column_widths=["46%", "18%", "18%", "18%"])
            cam_status = gr.Markdown(elem_id="match-cam-status")
            gallery = gr.Gallery(label="Per-word ITM Grad-CAM", columns=5, height="auto", elem_id="match-gradcam",
                                 format="png", type="pil")
    if rows:
        gr.Examples(rows, inputs=[image, texts], label="Synthetic test images (true caption, wrong colours, flipped relation)",
                    examples_per_page=8)
    scores = submit.click(lambda i, t: on_scores(predictor, i, t), [image, texts], [table, status], api_name="scores", concurrency_id="model")
    scores.then(lambda i, t, n, l: on_gradcam(predictor, i, t, n, l), [image, texts, line, layer], [gallery, cam_status],
                api_name="gradcam", concurrency_id="model")
    explain.click(lambda i, t, n, l: on_gradcam(predictor, i, t, n, l), [image, texts, line, layer], [gallery, cam_status],
                  api_name="explain", api_visibility="undocumented", concurrency_id="model")


def _vqa_tab(gr, predictor: DemoPredictor, rows) -> None:
    with gr.Row():
        with gr.Column():
            image = gr.Image(type="pil", label="Image", sources=["upload", "clipboard"], elem_id="vqa-image", height=280)
            question = gr.Textbox(label="Question", elem_id="vqa-question", placeholder="what colour is the circle?")
            submit = gr.Button("Answer", variant="primary", elem_id="vqa-submit")
        with gr.Column():
            status = gr.Markdown(elem_id="vqa-status")
            answer = gr.Textbox(label="Answer", interactive=False, elem_id="vqa-answer")
            table = gr.Dataframe(headers=["answer", "log-likelihood"], label="Top candidates", interactive=False, elem_id="vqa-ranked")
    if rows:
        gr.Examples([[r[0]] for r in rows], inputs=[image], label="Synthetic test images")
    submit.click(lambda i, q: on_vqa(predictor, i, q), [image, question], [answer, table, status], api_name="vqa", concurrency_id="model")


def _classify_tab(gr, predictor: DemoPredictor, rows) -> None:
    pair = predictor.visual_inputs == 2
    with gr.Row():
        with gr.Column():
            image = gr.Image(type="pil", label="Left image" if pair else "Image (premise)", sources=["upload", "clipboard"],
                             elem_id="classify-image", height=240)
            image2 = gr.Image(type="pil", label="Right image", sources=["upload", "clipboard"], elem_id="classify-image2",
                              height=240, visible=pair)
            text = gr.Textbox(label="Sentence" if pair else "Hypothesis", elem_id="classify-text")
            submit = gr.Button("Predict", variant="primary", elem_id="classify-submit")
        with gr.Column():
            status = gr.Markdown(elem_id="classify-status")
            table = gr.Dataframe(headers=["class", "probability"], label="Prediction", interactive=False, elem_id="classify-probs")
    if rows and not pair:
        gr.Examples([[r[0]] for r in rows], inputs=[image], label="Synthetic test images")
    submit.click(lambda a, t, b: on_classify(predictor, a, t, b), [image, text, image2], [table, status], api_name="classify", concurrency_id="model")


def _search_tab(gr, predictor: DemoPredictor) -> None:
    with gr.Row():
        text = gr.Textbox(label="Text", elem_id="search-text", scale=4, placeholder="a red circle above a green square")
        k = gr.Number(8, precision=0, minimum=1, maximum=100, label="Results", elem_id="search-k", scale=1)
        rerank = gr.Checkbox(False, label="re-rank by ITM", elem_id="search-rerank", scale=1)
        submit = gr.Button("Search", variant="primary", elem_id="search-submit", scale=1)
    status = gr.Markdown(elem_id="search-status")
    gallery = gr.Gallery(label="Best matches", columns=6, height="auto", elem_id="search-results")
    submit.click(lambda t, n, r: on_search(predictor, t, n, r), [text, k, rerank], [gallery, status], api_name="search", concurrency_id="model")


def launch(app, host: str = "127.0.0.1", port: int = 7860, allowed_paths: Sequence[str] = (), **kwargs) -> None:
    """Serve ``app`` on ``host:port`` until interrupted (loopback unless ``host`` says
    otherwise; no share link, no server-side rendering, no analytics)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    app.queue(default_concurrency_limit=1)  # one model: every event shares concurrency_id 'model', so requests take turns
    # (Grad-CAM sets state on an attention module; two calls at once would clear each other's)
    app.launch(server_name=host, server_port=int(port), share=False, ssr_mode=False, show_error=False,
               allowed_paths=list(allowed_paths), footer_links=["api"], **kwargs)
