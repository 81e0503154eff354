"""A task: everything that differs between model families, in one object.

Data loading, tokenization, collators, model classes, metrics, distillation alignment, timing and
calibration inputs all ask the task, so code outside ``hfcompress/tasks`` never compares task
names. A new family is one module here that subclasses :class:`Task` and registers an instance.
Heavy libraries are imported inside methods: the CLI lists tasks without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence, Union

if TYPE_CHECKING:
    import torch

    from ..data import DataConfig

IGNORE_INDEX = -100
# One model input as a person would give it: a text, or a (text, text_pair) for pair tasks.
TextInput = Union[str, tuple[str, str]]


def tokenize_inputs(tokenizer, inputs: Sequence[TextInput], **kwargs):
    """Tokenize texts or (text, text_pair) tuples in one call, as the model was trained on them."""
    inputs = list(inputs)
    if inputs and isinstance(inputs[0], tuple):
        return tokenizer([a for a, _ in inputs], [b for _, b in inputs], **kwargs)
    return tokenizer(inputs, **kwargs)


@dataclass(frozen=True)
class ServedBatch:
    """What a served batch's results are made from, beside its logits."""

    inputs: Sequence[TextInput]  # as the requests sent them
    encoding: Any  # the tokenizer's BatchEncoding of the padded batch (with what serve_tokenizer_kwargs asked for)
    tokenizer: Any
    config: Any  # the model config: labels, problem type


@dataclass(frozen=True)
class Task:
    """A task name and what hfcompress does differently for it.

    ``name`` is the Hub's pipeline tag and Optimum's export task; ``auto_model`` and ``ort_model``
    name the transformers and ``optimum.onnxruntime`` classes; ``architecture_suffixes`` recognise
    a checkpoint's task from ``config.architectures``; ``onnx_inputs`` are the inputs its ONNX graph
    may take, in the order Optimum's exporter gives them (see :meth:`onnx_input_names`).
    """

    name: str
    display_name: str
    auto_model: str
    ort_model: str
    architecture_suffixes: tuple[str, ...]
    default_metrics: tuple[str, ...] = ("accuracy", "f1")
    has_labels: bool = True
    per_token: bool = True  # one prediction per token (False: one per example)
    label_shift: int = 0  # causal LMs predict the next token: labels are shifted by one
    pre_split_words: bool = False  # the text column holds lists of words (tokenized with is_split_into_words)
    onnx_inputs: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
    serves_pairs: bool = False  # a served request may hold {"text", "text_pair"} pairs
    kv_cache: bool = False  # its ONNX graph is a decoder with past key values (hfcompress.export.decoder)

    @property
    def pipeline_tag(self) -> str:
        return self.name

    @property
    def export_task(self) -> str:
        return self.name

    def auto_class(self):
        import transformers

        return getattr(transformers, self.auto_model)

    def ort_class(self):
        import optimum.onnxruntime

        return getattr(optimum.onnxruntime, self.ort_model)

    def ort_load_kwargs(self) -> dict:
        return {}

    def matches(self, architecture: str) -> bool:
        return architecture.endswith(self.architecture_suffixes)

    # --- data -------------------------------------------------------------------------------

    def resolve_columns(self, cfg: DataConfig, column_names: Sequence[str]) -> DataConfig:
        """``cfg`` with any column it leaves to the data filled in (the image column of image tasks)."""
        return cfg

    def required_columns(self, cfg: DataConfig) -> list[str]:
        columns = [cfg.text_column] + ([cfg.text_pair_column] if cfg.text_pair_column else [])
        return columns + ([cfg.label_column] if self.has_labels else [])

    def check_rows(self, split: str, ds, cfg: DataConfig) -> Optional[dict]:
        """Every row of a labelled task needs its input and label: name the first empty cell (data rows count from 1).

        Language-modelling text keeps its empty lines: they are paragraph breaks, not missing values.
        Returns what :meth:`prepare_split` needs to know of the rows (nothing, for text).
        """
        from ..errors import DataError

        if not self.has_labels:
            return None
        for column in self.required_columns(cfg):
            for row, value in enumerate(ds[column], 1):
                if value is None or (isinstance(value, (str, list)) and len(value) == 0):
                    raise DataError(f"split '{split}' row {row} has an empty '{column}': fill it in or delete the row")
        return None

    def check_labels_covered(self, split: str, ds, cfg: DataConfig, label_count: int) -> None:
        """Called with a ClassLabel's class count on the training split; text tasks accept classes without examples."""

    def label_values(self, column: Sequence) -> set:
        """The label values a split uses (token tasks: every tag of every row)."""
        return set(column)

    def prepare_tokenizer(self, tokenizer) -> None:
        """Make ``tokenizer`` able to pad batches for this task."""

    def tokenize_rows(self, rows, tokenizer, cfg: DataConfig, **kwargs):
        """Tokenize raw rows (a batch dict or a Dataset) as the model reads them: pairs as pairs, words as words."""
        pair = list(rows[cfg.text_pair_column]) if cfg.text_pair_column else None
        return tokenizer(list(rows[cfg.text_column]), pair, is_split_into_words=self.pre_split_words, truncation=True, max_length=cfg.max_length, **kwargs)

    def encode(self, batch: dict, tokenizer, cfg: DataConfig, label2id: dict) -> dict:
        """Tokenize a batch of raw rows into model inputs and labels."""
        enc = self.tokenize_rows(batch, tokenizer, cfg)
        enc["labels"] = [label2id[v] for v in batch[cfg.label_column]]
        return enc

    def prepare_split(self, ds, tokenizer, cfg: DataConfig, label2id: dict, split: str, train: bool, seed: int, checked: Optional[dict] = None):
        """A raw split as model inputs and labels (text: tokenized once with ``Dataset.map``)."""
        self.prepare_tokenizer(tokenizer)

        def encode(batch):
            return self.encode(batch, tokenizer, cfg, label2id)

        return ds.map(encode, batched=True, remove_columns=ds.column_names, desc=f"Tokenizing {split}")

    def load_processor(self, name_or_path: str, trust_remote_code: bool = False):
        """What turns this task's raw inputs into model inputs, saved with the model: here its tokenizer."""
        from ..modeling import load_tokenizer

        return load_tokenizer(name_or_path, trust_remote_code)

    def check_processor_files(self, path) -> None:
        """A local model directory must hold what :meth:`load_processor` reads."""
        from ..modeling import check_tokenizer_files

        check_tokenizer_files(path)

    def model_inputs(self, tokenizer, inputs: Sequence[TextInput], max_length: Optional[int] = None) -> dict:
        """One batch of torch tensors from raw inputs, as a deployed model gets them (padded to the longest)."""
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token  # GPT-2-style tokenizers have no pad token
        return dict(tokenize_inputs(tokenizer, inputs, padding="longest", truncation=True, max_length=max_length, return_tensors="pt"))

    def collator(self, tokenizer):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def inputs(self, rows, cfg: DataConfig, count: Optional[int] = None) -> list[TextInput]:
        """Raw inputs of a split as a user would send them: what latency and parity checks run on (pairs included)."""
        texts = list(rows[cfg.text_column][:count])
        if cfg.text_pair_column:
            return list(zip(texts, rows[cfg.text_pair_column][:count]))
        return texts

    def calibration_features(self, rows, tokenizer, cfg: DataConfig, input_names: Sequence[str]) -> dict:
        """Static-quantization calibration batch: the graph's inputs only, padded to the longest row."""
        self.prepare_tokenizer(tokenizer)
        enc = self.tokenize_rows(rows, tokenizer, cfg, padding="longest")
        return {name: value.tolist() for name, value in self.onnx_feeds(enc, input_names).items()}

    # --- ONNX graphs --------------------------------------------------------------------------

    def onnx_input_names(self, model, tokenizer) -> list[str]:
        """The inputs of ``model``'s exported graph for this task: the names and order Optimum's exporter gives.

        Of :attr:`onnx_inputs`, those ``model.forward`` takes; segment ids (``token_type_ids``) only
        where the tokenizer produces them and the model embeds more than one segment type, which is
        how Optimum's per-architecture configs decide (BERT, ALBERT, ELECTRA: yes; RoBERTa,
        DistilBERT, DeBERTa-v3, GPT-2: no).
        """
        import inspect

        accepted = inspect.signature(model.forward).parameters
        names = [name for name in self.onnx_inputs if name in accepted]
        takes_segments = "token_type_ids" in tokenizer.model_input_names and getattr(model.config, "type_vocab_size", 0) > 1
        return [name for name in names if name != "token_type_ids" or takes_segments]

    def onnx_feeds(self, batch, input_names: Sequence[str]) -> dict:
        """The int64 arrays an ONNX graph of this task asks for, from a tokenized batch (lists, arrays or CPU tensors).

        Inputs a tokenizer does not give are derived as the runtime would (:meth:`derived_inputs`).
        """
        import numpy as np

        given = {name: np.asarray(value, dtype=np.int64) for name, value in batch.items() if name in input_names}
        if len(given) < len(input_names):
            given = {**self.derived_inputs(given), **given}
        missing = [name for name in input_names if name not in given]
        if missing:
            from ..errors import ModelError

            raise ModelError(f"the ONNX graph needs inputs {missing} that the tokenizer does not produce: re-export the model with its own tokenizer")
        return {name: given[name] for name in input_names}

    def onnx_dynamic_axes(self) -> dict[int, str]:
        """The dimensions of every graph input that vary between calls, by name (Optimum's names)."""
        return {0: "batch_size", 1: "sequence_length"}

    def parity_shapes(self, config, sequence_lengths: Sequence[int]) -> list[dict]:
        """The input shapes a parity check runs at besides the batch size: each length, capped at the model's maximum."""
        max_length = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 512
        if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
            max_length -= 2  # RoBERTa positions start after the padding index
        return [{"sequence_length": length} for length in sorted({min(length, max_length) for length in sequence_lengths})]

    def parity_batch(self, tokenizer, inputs: Sequence[TextInput], batch_size: int, shape: dict) -> dict:
        """A parity-check batch of ``batch_size`` rows at ``shape`` (one of :meth:`parity_shapes`)."""
        from ..export.parity import parity_batch

        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token  # GPT-2-style tokenizers have no pad token
        return parity_batch(tokenizer, inputs, batch_size, shape["sequence_length"])

    def default_inputs(self, tokenizer, config) -> list:
        """Inputs for the export's parity check when no real ones are given: a built-in set of real sentences."""
        from ..export.parity import DEFAULT_PARITY_TEXTS

        return list(DEFAULT_PARITY_TEXTS)

    def derived_inputs(self, encoding: dict) -> dict:
        """Graph inputs computed from the tokenizer's arrays: one segment (zero token types), as ORTModel fills them."""
        import numpy as np

        return {"token_type_ids": np.zeros_like(encoding["input_ids"])}

    # --- predictions --------------------------------------------------------------------------

    def output_size(self, config) -> int:
        """Width of the logits: the label count, or the vocabulary for language models."""
        return config.num_labels if self.has_labels else config.vocab_size

    def align_logits(self, student_logits, teacher_logits, labels, attention_mask):
        """Flatten logits to [items, classes] and labels to [items], with the mask of the items that count.

        An item is what one prediction is made for: a labelled (or, without labels, attended) token,
        or for causal LMs the next-token position.
        """
        import torch

        shift = self.label_shift
        if shift:
            student_logits, teacher_logits = student_logits[:, :-shift], teacher_logits[:, :-shift]
        labels = labels[:, shift:] if labels is not None else None
        attention_mask = attention_mask[:, shift:] if attention_mask is not None else None
        if labels is not None:
            mask = labels != IGNORE_INDEX
        elif attention_mask is not None:
            mask = attention_mask.bool()
        else:
            mask = torch.ones(student_logits.shape[:-1], dtype=torch.bool, device=student_logits.device)
        classes = student_logits.shape[-1]
        flat_labels = labels.reshape(-1) if labels is not None else None
        return student_logits.reshape(-1, classes), teacher_logits.reshape(-1, classes), flat_labels, mask.reshape(-1)

    def count_items(self, labels, attention_mask, batch_size: int) -> int:
        """How many items a batch contributes; agrees with :meth:`align_logits`."""
        shift = self.label_shift
        if labels is not None:
            return int((labels[:, shift:] != IGNORE_INDEX).sum())
        if attention_mask is not None:
            return int(attention_mask[:, shift:].sum())
        raise ValueError("token-level distillation needs labels or an attention_mask to count positions")

    def f1_average(self, num_labels: int) -> Optional[str]:
        return "macro" if num_labels > 2 else None

    def compute_metrics(self, predictions, references, metric_names: Optional[Sequence[str]] = None, num_labels: int = 2) -> dict:
        """``evaluate`` metrics of arg-maxed predictions; positions labelled -100 do not count."""
        import numpy as np

        from ..metrics import load_metric

        predictions, references = np.asarray(predictions), np.asarray(references)
        keep = references != IGNORE_INDEX
        predictions, references = predictions[keep], references[keep]
        results: dict[str, float] = {}
        for name in metric_names if metric_names is not None else self.default_metrics:
            average = self.f1_average(num_labels) if name == "f1" else None
            kwargs = {"average": average} if average else {}
            results.update(load_metric(name).compute(predictions=predictions.tolist(), references=references.tolist(), **kwargs))
        return results

    def trainer_compute_metrics(self, metric_names: Optional[Sequence[str]] = None, num_labels: int = 2):
        """A ``compute_metrics`` for ``transformers.Trainer`` (None where the eval loss is the metric)."""

        def compute(eval_pred):
            logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
            return self.compute_metrics(logits.argmax(-1), eval_pred.label_ids, metric_names, num_labels)

        return compute

    def score(self, outputs: Iterable[tuple[torch.Tensor, torch.Tensor]], num_labels: int) -> dict:
        """Metrics over ``(logits, labels)`` batches from any runtime."""
        import numpy as np

        predictions, references = [], []
        for logits, labels in outputs:
            keep = labels != IGNORE_INDEX
            predictions.append(logits.argmax(-1)[keep].numpy())
            references.append(labels[keep].numpy())
        return self.compute_metrics(np.concatenate(predictions), np.concatenate(references), num_labels=num_labels)

    # --- serving ----------------------------------------------------------------------------

    def serve_inputs(self, inputs) -> list[TextInput]:
        """The model inputs of a request's ``inputs`` value (Hugging Face inference conventions).

        A text, or a list of texts; :attr:`serves_pairs` tasks also take ``{"text": ..., "text_pair": ...}``
        and lists of them. Raises :class:`~hfcompress.errors.DataError` naming what is wrong.
        """
        from ..errors import DataError

        items = inputs if isinstance(inputs, list) else [inputs]
        if not items:
            raise DataError("'inputs' is an empty list: send at least one text")
        return [self._serve_input(item, DataError) for item in items]

    def _serve_input(self, item, error: type) -> TextInput:
        pair_form = ' or {"text": ..., "text_pair": ...}' if self.serves_pairs else ""
        if isinstance(item, dict) and self.serves_pairs:
            if set(item) != {"text", "text_pair"}:
                raise error(f"a pair input has keys {sorted(item)}: give exactly 'text' and 'text_pair'")
            pair = (item["text"], item["text_pair"])
            if not all(isinstance(t, str) and t.strip() for t in pair):
                raise error("'text' and 'text_pair' must both be non-empty strings")
            return pair
        if not isinstance(item, str):
            raise error(f"each input must be a string{pair_form}, got {type(item).__name__}")
        if not item.strip():
            raise error("an input text is empty: send text with at least one non-space character")
        return item

    def serve_tokenizer_kwargs(self) -> dict:
        """Extra tokenizer arguments :meth:`serve_outputs` needs (e.g. character offsets)."""
        return {}

    def serve_outputs(self, logits, batch: ServedBatch, top_k: Sequence[Optional[int]]) -> list[list[dict]]:
        """Pipeline-shaped results of one batch: a list of dicts per input, from the logits as a numpy array.

        ``top_k`` is one value per input (None: every label). Tasks that ``/predict`` serves override it.
        """
        from ..errors import ModelError

        raise ModelError(
            f"/predict does not serve the {self.name} task: it serves text- and token-classification models "
            "(a text-generation model is served on /generate and /generate_stream)"
        )

    def card_labels(self, config: dict) -> Optional[dict]:
        """Labels the model card lists."""
        return None

    def card_usage(self) -> dict:
        """How the card's ONNX Runtime snippets load the processor and make inputs, and what built-in parity inputs are."""
        return {
            "processor_var": "tokenizer",
            "processor_class": "AutoTokenizer",
            "example_imports": "",
            "example_inputs": 'tokenizer(["A small model that still gets it right."], return_tensors="np")',
            "given_parity_inputs": "the sentences given to the export",
            "builtin_parity_inputs": "hfcompress's built-in real sentences",
        }

    def card_metrics(self, results: dict, metrics: dict) -> dict:
        """Metrics for the card derived from a Trainer's eval results (language models: perplexity from the loss)."""
        return metrics

    def check_compatible(self, teacher_config, student_config) -> None:
        """A teacher and student of a labelled task must share the label set."""
        from ..errors import ConfigError

        if not self.has_labels:
            return
        if teacher_config.num_labels != student_config.num_labels:
            raise ConfigError(
                f"teacher has {teacher_config.num_labels} labels and student {student_config.num_labels}: "
                "give the student the teacher's label set (num_labels/id2label)"
            )
        t_labels, s_labels = teacher_config.id2label, student_config.id2label
        if t_labels and s_labels and {int(k): v for k, v in t_labels.items()} != {int(k): v for k, v in s_labels.items()}:
            raise ConfigError(f"teacher labels {t_labels} differ from student labels {s_labels}: use the same id2label")
