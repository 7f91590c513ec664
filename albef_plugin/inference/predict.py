"""Look at what a trained ALBEF sees: image-text matching, retrieval over a folder of images,
VQA answers and Grad-CAM heat-maps, from Python or ``tools/predict.py``.

    from albef_plugin.inference.predict import Predictor
    predictor = Predictor("weights/refcoco.pth")               # sizes read off the checkpoint
    predictor.itm(["dog.jpg"], ["a dog on the grass"])          # [{match_probability, itc_similarity}]
    predictor.build_index("photos/", "photos_index/")           # features.safetensors + index.json
    predictor.search_text("photos_index/", "a red car", top_k=5, rerank=16)
    predictor.search_image("photos_index/", "query.jpg", top_k=5)
    predictor.gradcam("dog.jpg", "a dog on the grass", "heatmaps/")   # PNG per word + sentence

    vqa = Predictor("weights/vqa.pth", task="vqa")             # refuses a non-VQA checkpoint early
    vqa.vqa(["dog.jpg"], ["what is on the grass?"], "answer_list.json", k=128, top_k=5)
    # [{image, question, answers: [{answer, score}, ...]}]

The checkpoint may be an official ALBEF file (a config-less ``.pth``: sizes inferred from its
tensors), one of this project's trainer checkpoints or a converted folder. Every user error is
a :class:`PredictError` naming the file or argument.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from albef_plugin.errors import UserError

__all__ = ["Predictor", "PredictError", "IMAGE_SUFFIXES", "checkpoint_hash", "read_answer_list"]

PathLike = Union[str, Path]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
INDEX_FEATURES, INDEX_META = "features.safetensors", "index.json"


class PredictError(UserError, ValueError):
    """A bad file or argument of a prediction (the message names it)."""


def checkpoint_hash(path: PathLike) -> str:
    """SHA-256 of a checkpoint file, or of a converted folder's files (names and bytes)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.relative_to(path).as_posix().encode() if path.is_dir() else b"")
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


# what each registered model was trained for, in the words of the error messages
_TASK_OF_MODEL = {"albef_pretrain": "pretraining", "albef_retrieval": "retrieval",
                  "albef_grounding": "grounding (RefCOCO+)", "albef_ve": "SNLI-VE",
                  "albef_nlvr": "NLVR2", "albef_nlvr_ta": "NLVR2 text-assignment pretraining",
                  "albef_vqa": "VQA"}


def _task_of_checkpoint(contents: Any, model_name: str) -> str:
    """The task a checkpoint looks trained for: its stored model name (ours), else its heads."""
    stored = contents.metadata.get("model")
    if stored:
        return _TASK_OF_MODEL.get(str(stored), str(stored))
    state = contents.state_dict
    if "ta_head.weight" in state:
        return _TASK_OF_MODEL["albef_nlvr_ta"]
    head = state.get("cls_head.2.weight")
    if head is not None:  # the classifier's output size: 3 classes for VE, 2 for NLVR2
        return _TASK_OF_MODEL["albef_nlvr" if head.shape[0] == 2 else "albef_ve"]
    if model_name == "albef_retrieval":
        return "retrieval or grounding"  # mscoco.pth, flickr30k.pth and refcoco.pth look alike
    return _TASK_OF_MODEL.get(model_name, model_name)


def _model_name_for(contents: Any) -> str:
    """The registered model for a checkpoint: the stored name (ours), else from the layout."""
    from albef_plugin.models.checkpoints.filters import LAYOUT_TEXT_WITH_MLM_HEAD, text_encoder_layout

    stored = contents.metadata.get("model")
    if stored:
        return str(stored)
    state = contents.state_dict
    if any(k.startswith("text_decoder.") for k in state):
        return "albef_vqa"
    if text_encoder_layout(state) == LAYOUT_TEXT_WITH_MLM_HEAD:
        return "albef_pretrain"
    return "albef_retrieval"  # mscoco.pth / flickr30k.pth / refcoco.pth: same modules


def read_answer_list(answers: Union[PathLike, Sequence[str]]) -> List[str]:
    """The VQA candidates: an ``answer_list.json`` file (official format: a JSON list of
    distinct non-empty strings) or such a list; a :class:`PredictError` names what is wrong."""
    from albef_plugin.datasets.annotations import AnnotationError
    from albef_plugin.datasets.vqa import check_answer_list, load_answer_list

    if isinstance(answers, (str, Path)) and not Path(answers).is_file():
        raise PredictError(f"--answer-list {answers}: no such file; give answer_list.json, a "
                           f"JSON list of the candidate answers.")
    try:
        if isinstance(answers, (str, Path)):
            return load_answer_list(answers)
        return check_answer_list(answers, "answer_list")
    except AnnotationError as exc:
        raise PredictError(f"--answer-list {exc}") from None


class Predictor:
    """A model and its processors, loaded once, with the prediction tasks as methods.

    Args:
        checkpoint: official ``.pth``, trainer ``.ckpt`` or converted folder.
        device: ``cpu`` (default) or ``cuda`` / ``cuda:N``.
        model: registered model name; None = from the checkpoint (see :func:`_model_name_for`).
        overrides: model-config overrides (e.g. head counts of non-standard sizes).
        task: the task it will run (``itm``, ``retrieve``, ``gradcam`` or ``vqa``), to refuse a
            checkpoint of another task before the model is built; None = checked per call.
    """

    def __init__(self, checkpoint: PathLike, device: str = "cpu", model: Optional[str] = None,
                 overrides: Optional[Dict[str, Any]] = None, allow_unsafe_pickle: bool = False,
                 task: Optional[str] = None) -> None:
        from albef_plugin.inference import load_model_and_preprocess
        from albef_plugin.models.checkpoints import read_checkpoint

        self.checkpoint = Path(checkpoint)
        if not self.checkpoint.exists():
            raise PredictError(f"--checkpoint {checkpoint}: no such file or folder.")
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise PredictError(f"--device {device}: CUDA is not available on this machine; use cpu.")
        contents = read_checkpoint(self.checkpoint, allow_unsafe_pickle)
        self.model_name = model or _model_name_for(contents)
        self.checkpoint_task = _task_of_checkpoint(contents, self.model_name)
        if task == "vqa" and model is None and self.model_name != "albef_vqa":
            # before building: a VE / NLVR2 file would fail to load as the guessed model
            raise self._wrong_task("vqa")
        self.model, self.image_processor, self.text_processor = load_model_and_preprocess(
            self.model_name, contents, device=device, overrides=overrides)
        self.device = torch.device(device)
        self._hash: Optional[str] = None
        if task is not None:
            self.check_task(task)

    def check_task(self, task: str) -> None:
        """Raise a :class:`PredictError` unless the model has what ``task`` reads: the answer
        decoder (``vqa``) or the ITC projections and ITM head (``itm``, ``retrieve``, ``gradcam``)."""
        if task == "vqa":
            ready = hasattr(self.model, "rank_answer")
        else:
            ready = all(hasattr(self.model, name) for name in ("itm_head", "vision_proj", "text_proj"))
        if not ready:
            raise self._wrong_task(task)

    def _wrong_task(self, task: str) -> PredictError:
        if task == "vqa":
            return PredictError(
                f"--checkpoint {self.checkpoint} is not a VQA checkpoint: it looks like one for "
                f"{self.checkpoint_task} (no answer decoder text_decoder.*). --task vqa needs "
                f"albef_vqa weights: the official vqa.pth or a checkpoint of a VQA training run.")
        return PredictError(
            f"--checkpoint {self.checkpoint} looks like a checkpoint for {self.checkpoint_task} "
            f"({self.model_name}): it has no ITC projections / ITM head, which --task {task} reads. "
            + ("Use --task vqa with it." if self.model_name == "albef_vqa" else
               "Use a pretraining, retrieval or grounding checkpoint."))

    # ------------------------------------------------------------------ helpers
    @property
    def checkpoint_sha256(self) -> str:
        if self._hash is None:
            self._hash = checkpoint_hash(self.checkpoint)
        return self._hash

    def load_image(self, path: PathLike) -> Image.Image:
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except FileNotFoundError:
            raise PredictError(f"image {path}: no such file.") from None
        except OSError as exc:
            raise PredictError(f"image {path}: not a readable image ({exc}).") from None

    def _images(self, paths: Sequence[PathLike]) -> torch.Tensor:
        return torch.stack([self.image_processor(self.load_image(p)) for p in paths]).to(self.device)

    def _texts(self, texts: Sequence[str]) -> Dict[str, torch.Tensor]:
        if not texts or any(not str(t).strip() for t in texts):
            raise PredictError("--text: give at least one non-empty text.")
        tokens = self.text_processor(list(texts))
        return {k: v.to(self.device) for k, v in tokens.items()}

    # ---------------------------------------------------------------------- itm
    @torch.no_grad()
    def itm(self, images: Sequence[PathLike], texts: Sequence[str]) -> List[Dict[str, Any]]:
        """Every (image, text) pair: ITM match probability and ITC cosine similarity."""
        self.check_task("itm")
        if not images:
            raise PredictError("--image: give at least one image.")
        tokens = self._texts(texts)
        text_embeds, text_feat = self.model.encode_text(tokens["input_ids"], tokens["attention_mask"])
        rows = []
        for path in images:
            image_embeds, image_feat = self.model.encode_image(self._images([path]))
            n = len(texts)
            logits = self.model.itm_logits(text_embeds, tokens["attention_mask"],
                                           image_embeds.expand(n, -1, -1))
            probs = logits.float().softmax(-1)[:, 1]
            sims = (text_feat @ image_feat[0]).float()
            rows += [{"image": str(path), "text": t, "match_probability": float(p), "itc_similarity": float(s)}
                     for t, p, s in zip(texts, probs.tolist(), sims.tolist())]
        return rows

    # ----------------------------------------------------------------- retrieval
    @torch.no_grad()
    def build_index(self, folder: PathLike, index_dir: PathLike, batch_size: int = 32) -> Path:
        """ITC features of every image under ``folder`` (recursively) -> ``index_dir``
        (``features.safetensors`` + ``index.json`` with the paths and the checkpoint hash)."""
        from safetensors.torch import save_file

        self.check_task("retrieve")
        folder = Path(folder)
        if not folder.is_dir():
            raise PredictError(f"--images {folder}: not a folder.")
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not paths:
            raise PredictError(f"--images {folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) to index.")
        feats = []
        for start in range(0, len(paths), batch_size):
            feats.append(self.model.encode_image(self._images(paths[start:start + batch_size]))[1].float().cpu())
        index_dir = Path(index_dir)
        index_dir.mkdir(parents=True, exist_ok=True)
        save_file({"image_feat": torch.cat(feats).contiguous()}, str(index_dir / INDEX_FEATURES))
        meta = {"paths": [str(p.resolve()) for p in paths], "checkpoint_sha256": self.checkpoint_sha256,
                "checkpoint": str(self.checkpoint), "model": self.model_name}
        (index_dir / INDEX_META).write_text(json.dumps(meta, indent=1))
        return index_dir

    def load_index(self, index_dir: PathLike) -> Dict[str, Any]:
        from safetensors.torch import load_file

        index_dir = Path(index_dir)
        meta_path, feat_path = index_dir / INDEX_META, index_dir / INDEX_FEATURES
        if not meta_path.is_file() or not feat_path.is_file():
            raise PredictError(f"--index {index_dir}: no {INDEX_META} / {INDEX_FEATURES}; build it "
                               f"with --task retrieve --images FOLDER --index {index_dir}.")
        meta = json.loads(meta_path.read_text())
        if meta.get("checkpoint_sha256") != self.checkpoint_sha256:
            raise PredictError(f"--index {index_dir} was built with another checkpoint "
                               f"({meta.get('checkpoint')}); its features do not match {self.checkpoint}. "
                               f"Rebuild it with this checkpoint (--images FOLDER) or use the same one.")
        meta["image_feat"] = load_file(str(feat_path))["image_feat"].to(self.device)
        return meta

    @torch.no_grad()
    def search_text(self, index_dir: PathLike, query: str, top_k: int = 5,
                    rerank: int = 0) -> List[Dict[str, Any]]:
        """Images of the index ranked by ITC similarity to ``query``; with ``rerank`` K the top
        K are re-ranked by ITM match probability (their images re-encoded)."""
        self.check_task("retrieve")
        index = self.load_index(index_dir)
        tokens = self._texts([query])
        text_embeds, text_feat = self.model.encode_text(tokens["input_ids"], tokens["attention_mask"])
        sims = index["image_feat"] @ text_feat[0].float()
        order = sims.argsort(descending=True).tolist()
        rows = [{"path": index["paths"][i], "itc_similarity": float(sims[i])} for i in order]
        if rerank > 0:
            head = rows[:rerank]
            image_embeds, _ = self.model.encode_image(self._images([r["path"] for r in head]))
            n = len(head)
            logits = self.model.itm_logits(text_embeds.expand(n, -1, -1),
                                           tokens["attention_mask"].expand(n, -1), image_embeds)
            for row, prob in zip(head, logits.float().softmax(-1)[:, 1].tolist()):
                row["match_probability"] = prob
            rows = sorted(head, key=lambda r: -r["match_probability"]) + rows[rerank:]
        return rows[:top_k]

    @torch.no_grad()
    def search_image(self, index_dir: PathLike, image: PathLike, top_k: int = 5) -> List[Dict[str, Any]]:
        """Images of the index ranked by ITC image-feature similarity to ``image``."""
        self.check_task("retrieve")
        index = self.load_index(index_dir)
        _, feat = self.model.encode_image(self._images([image]))
        sims = index["image_feat"] @ feat[0].float()
        order = sims.argsort(descending=True).tolist()[:top_k]
        return [{"path": index["paths"][i], "similarity": float(sims[i])} for i in order]

    # ----------------------------------------------------------------------- vqa
    def vqa(self, images: Union[PathLike, Sequence[PathLike]], questions: Union[str, Sequence[str]],
            answer_list: Union[PathLike, Sequence[str]], k: int = 128,
            top_k: int = 5) -> List[Dict[str, Any]]:
        """Every (image, question) pair answered from ``answer_list`` by the model's
        ``rank_answer`` (:class:`VQAAnswerer`): the ``k`` candidates with the most probable
        first token are scored by the decoder (k is capped at the list size).

        Args:
            images: an image file or several; questions: one question or several.
            answer_list: an ``answer_list.json`` file (a JSON list of strings) or the list itself.
            k: candidates re-ranked per question (official 128).
            top_k: answers kept per question (at most ``min(k, len(answer_list))``).

        Returns:
            ``[{image, question, answers: [{answer, score}, ...]}]``, image-major, answers best
            first; ``score`` is the softmax of the ranking scores over the k candidates.
        """
        from albef_plugin.models.albef.vqa import VQAAnswerer

        self.check_task("vqa")
        images = [images] if isinstance(images, (str, Path)) else list(images)
        questions = [questions] if isinstance(questions, str) else list(questions)
        if not images:
            raise PredictError("--image: give at least one image.")
        if not questions or any(not isinstance(q, str) or not q.strip() for q in questions):
            raise PredictError("--question: give at least one non-empty question.")
        if k < 1 or top_k < 1:
            raise PredictError(f"--k {k} and --top-k {top_k} must be >= 1.")
        answerer = VQAAnswerer(self.model, read_answer_list(answer_list), k=k,
                               image_processor=self.image_processor)
        pictures = [self.load_image(path) for path in images]  # every file checked first
        rows = []
        for path, pil in zip(images, pictures):
            ranked = answerer.answer_batch([pil] * len(questions), questions, top=top_k)
            rows += [{"image": str(path), "question": question,
                      "answers": [{"answer": a, "score": p} for a, p in answers]}
                     for question, answers in zip(questions, ranked)]
        return rows

    # ------------------------------------------------------------------- gradcam
    def gradcam_layer(self) -> int:
        layer = getattr(self.model, "gradcam_layer", None)
        if layer is not None:
            return int(layer)
        bert = getattr(self.model.text_encoder, "bert", self.model.text_encoder)
        fusion, layers = bert.config.fusion_layer, bert.config.num_hidden_layers
        return min(fusion + 2, layers - 1)  # the third fusion layer (official block 8), or the last

    def itc_block(self) -> int:
        block = getattr(self.model, "itc_block", None)
        if block is not None:
            return int(block)
        return min(8, len(self.model.visual_encoder.blocks) - 1)  # official --block_num 8

    def gradcam(self, image: PathLike, text: str, out_dir: PathLike,
                layer: Optional[int] = None, mode: str = "itm") -> List[Path]:
        """Grad-CAM overlays: ``sentence.png``, plus one ``NN_<word>.png`` per token in ITM mode.

        ``mode`` ``itm``: a fusion layer's cross-attention (``layer``: text layer index);
        ``itc``: a ViT block's self-attention (``layer``: block index), sentence map only."""
        from albef_plugin.inference.gradcam import itc_gradcam, itm_gradcam

        self.check_task("gradcam")
        if mode not in ("itm", "itc"):
            raise PredictError(f"--gradcam-mode {mode!r}: choose itm or itc.")
        pil = self.load_image(image)
        tokens = self._texts([text])
        pixels = self._images([image])
        if mode == "itm":
            cam = itm_gradcam(self.model, pixels, tokens["input_ids"], tokens["attention_mask"],
                              self.gradcam_layer() if layer is None else layer)
        else:
            blocks = len(self.model.visual_encoder.blocks)
            block = self.itc_block() if layer is None else layer
            if not 0 <= block < blocks:
                raise PredictError(f"--layer {block}: the image encoder has blocks 0..{blocks - 1}.")
            cam = itc_gradcam(self.model, pixels, tokens["input_ids"], tokens["attention_mask"], block)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = [_write_overlay(pil, cam.sentence[0], out_dir / "sentence.png")]
        if cam.tokens is None:
            return written
        words = self.text_processor.convert_ids_to_tokens(tokens["input_ids"][0].tolist())
        for position, word in enumerate(words):
            if word in ("[CLS]", "[PAD]", "[SEP]"):
                continue
            name = re.sub(r"[^A-Za-z0-9_-]", "_", word) or "token"
            written.append(_write_overlay(pil, cam.tokens[0, position], out_dir / f"{position:02d}_{name}.png"))
        return written


def _write_overlay(image: Image.Image, heatmap: torch.Tensor, path: Path, alpha: float = 0.5) -> Path:
    """The heat-map, upsampled bicubically to the image and min-max normalised, in the 'jet'
    colour map blended over the image."""
    from matplotlib import colormaps

    width, height = image.size
    full = F.interpolate(heatmap.float()[None, None].cpu(), size=(height, width), mode="bicubic",
                         align_corners=False)[0, 0]
    full = (full - full.min()) / (full.max() - full.min()).clamp(min=1e-12)
    colours = colormaps["jet"](full.numpy())[..., :3]
    blended = (1 - alpha) * np.asarray(image, dtype=np.float32) / 255.0 + alpha * colours
    Image.fromarray((blended.clip(0, 1) * 255).astype(np.uint8)).save(path)
    return path


# -------------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/predict.py", description="Image-text matching, retrieval, VQA and Grad-CAM "
        "heat-maps with a trained ALBEF (official .pth, trainer .ckpt or converted folder).")
    parser.add_argument("--checkpoint", required=True, help="weights; sizes are read from it")
    parser.add_argument("--task", required=True, choices=["itm", "retrieve", "vqa", "gradcam"])
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--model", default=None, help="registered model name (default: from the checkpoint)")
    parser.add_argument("--image", nargs="+", default=[], help="image file(s)")
    parser.add_argument("--text", nargs="+", default=[], help="text(s) / the retrieval query")
    parser.add_argument("--question", nargs="+", default=[],
                        help="vqa: question(s), each asked of every --image")
    parser.add_argument("--answer-list", default=None,
                        help="vqa: answer_list.json, the candidate answers (a JSON list of strings)")
    parser.add_argument("--k", type=int, default=128,
                        help="vqa: candidates the decoder re-ranks (official 128; at most the list size)")
    parser.add_argument("--images", default=None, help="retrieve: folder of images to index")
    parser.add_argument("--index", default=None, help="retrieve: index folder (built with --images)")
    parser.add_argument("--top-k", type=int, default=5,
                        help="retrieve: results to print; vqa: answers per question")
    parser.add_argument("--rerank", type=int, default=0, help="retrieve: re-rank the top K by ITM")
    parser.add_argument("--out", default=None, help="gradcam: output folder of the PNGs")
    parser.add_argument("--gradcam-mode", default="itm", choices=["itm", "itc"],
                        help="gradcam: itm (fusion cross-attention, per-word maps) or itc (ViT block)")
    parser.add_argument("--layer", type=int, default=None,
                        help="gradcam: text/fusion layer in itm mode (default: the model's, else "
                             "fusion_layer + 2), ViT block in itc mode")
    parser.add_argument("--output", default=None, help="also write the printed JSON to this file")
    return parser


def run_task(args: Any) -> Any:
    """One task of the parsed arguments; returns what the command prints (JSON-able)."""
    def need(value: Any, flag: str) -> Any:
        if not value:
            raise PredictError(f"--task {args.task} needs {flag}.")
        return value

    if args.top_k < 1 or args.rerank < 0:
        raise PredictError(f"--top-k {args.top_k} must be >= 1 and --rerank {args.rerank} >= 0.")
    if args.task == "vqa":  # the flags and the answer list first: no model built for nothing
        images = need(args.image, "--image FILE [FILE ...]")
        questions = need(args.question, "--question TEXT [TEXT ...]")
        answer_list = read_answer_list(need(args.answer_list, "--answer-list answer_list.json "
                                                             "(a JSON list of the candidate answers)"))
        if args.k < 1:
            raise PredictError(f"--k {args.k} must be >= 1.")
    predictor = Predictor(args.checkpoint, device=args.device, model=args.model, task=args.task)
    if args.task == "itm":
        return predictor.itm(need(args.image, "--image FILE [FILE ...]"), need(args.text, "--text TEXT [TEXT ...]"))
    if args.task == "vqa":
        return predictor.vqa(images, questions, answer_list, k=args.k, top_k=args.top_k)
    if args.task == "gradcam":
        image = need(args.image, "--image FILE")
        if len(image) != 1 or len(need(args.text, "--text TEXT")) != 1:
            raise PredictError("--task gradcam takes one --image and one --text.")
        paths = predictor.gradcam(image[0], args.text[0], need(args.out, "--out FOLDER"), args.layer,
                                  args.gradcam_mode)
        return {"written": [str(p) for p in paths]}
    index = need(args.index, "--index FOLDER")
    result: Dict[str, Any] = {}
    if args.images:
        result["index"] = str(predictor.build_index(args.images, index))
    if args.text:
        result["text_query"] = predictor.search_text(index, " ".join(args.text), args.top_k, args.rerank)
    if args.image:
        result["image_query"] = predictor.search_image(index, args.image[0], args.top_k)
    if not result:
        raise PredictError("--task retrieve needs --images FOLDER (build the index) and/or a query "
                           "(--text TEXT or --image FILE).")
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``tools/predict.py``: prints the result as JSON (and writes it to ``--output``); a user
    error is one ``error:`` line, exit 2."""
    import sys

    from albef_plugin.errors import USER_ERROR_EXIT_CODE

    args = _parser().parse_args(argv)
    try:
        result = run_task(args)
        text = json.dumps(result, indent=1)
        if args.output:
            _write_output(Path(args.output), text)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    print(text)
    return 0


def _write_output(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    except OSError as exc:
        raise PredictError(f"--output {path}: cannot write it ({exc.strerror or exc}).") from None
