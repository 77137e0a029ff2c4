"""Personal adaptation: a user's head from the universal one and their corrections.

Policy (:func:`adapt_user`):

1. The user's corrections are read from the :class:`~emoadapt.store.Store` (only those made
   with the current backbone).
2. A *personal* head is fitted on them by the chosen ``strategy`` (:data:`STRATEGIES`):
   ``"finetune"`` (default) a copy of the universal head fine-tuned with an L2 pull
   toward the universal weights (``anchor``), new labels added as new outputs, mixed with a
   small *replay* of universal training features for the classes the user has not corrected
   (``models/replay_<backbone>.npz``, built by ``scripts/build_replay_set.py``);
   ``"prototype"`` nearest class prototypes of the user's own features
   (:class:`~emoadapt.heads.PrototypeHead`); ``"logistic"`` a logistic regression on the
   user's own features only.
3. *Centring on the user* (``center``, default on, with a replay set): every frame, of the
   corrections and of what the user's head predicts later, has the user's offset
   (:func:`user_offset`: the mean over the corrected classes of the user's class mean minus
   the universal class mean, shrunk when few classes are corrected) subtracted first, so
   that what all the person's faces share (identity, camera) is removed before the heads
   read them. The offset is saved with the head (:class:`~emoadapt.heads.CenteredHead`).
4. The *guard* decides how much to trust it, from the first correction on: every
   correction is held out once (leave-one-out up to :data:`LOO_MAX` corrections; beyond,
   every :data:`HELD_OUT_EVERY`-th correction is held out once, which keeps ``adapt``
   fast), the offset and the personal head are re-estimated on the others, and the
   candidates are scored on it: the universal head (weight 0, not centred), the centred
   universal head, the *mix* (weight ``n / (n + mix_k)``, growing with the evidence), the
   personal head (weight 1) and, for the fine-tune, the personal head fine-tuned with a
   weaker pull (:data:`ALT_ANCHORS`, on features not centred: :data:`ALT_CENTER`). The most
   accurate wins; ties go to the more personal candidate, and between personal heads to the
   higher mean log-likelihood of the held-out labels (the benchmark's numbers). Leave-one-out
   on a few corrections is noisy: another candidate replaces the personal head only when it
   gets :data:`GUARD_MARGIN` more held-out corrections right. With one
   correction per class, the held-out correction's class is absent from the others: the
   check then measures whether the personal evidence about the other classes drags an
   unseen expression away from what the universal head says, the harm a personal model can
   do.
5. The personal head refitted on all corrections is saved atomically as a new version,
   inside a :class:`~emoadapt.heads.BlendHead` with the chosen weight, itself inside a
   :class:`~emoadapt.heads.CenteredHead` when the choice reads centred features (choosing
   the universal model also retires an older personal head); the previous version is kept
   as a fallback. :class:`AdaptReport` says what was chosen and why.
6. *The identity expert*: when the corrections carry identity embeddings of two labels or
   more (``correct()`` stores the embedding that routed the face; ``adapt_user``'s
   ``identity_model`` picks those of the recogniser's model), a softmax regression on them
   (:class:`~emoadapt.heads.IdentityExpertHead`, weight :data:`IDENTITY_EXPERT_WEIGHT`) is
   mixed into the saved head. Within one person an identity embedding still moves with the
   expression, and ``predict()`` has the face's embedding anyway (it routes on it). The
   expert has no say about labels it was not fitted on (they get its highest probability),
   so it can reorder the corrected expressions but never push an uncorrected one down.

7. *The evidence gate* (:class:`~emoadapt.heads.EvidenceGateHead`, unless the universal head
   was chosen): the saved head may move an answer away from the universal head's only toward
   a label the user corrected, once corrections of :data:`GATE_MIN_CLASSES` labels exist
   (before that, only toward nothing), toward any label from :data:`GATE_OPEN_CLASSES` on; a clip whose mean feature is within cosine
   :data:`RECALL` of a corrected one is answered with that correction's label. A person's
   clips from one camera look alike: without the gate, one correction (or five of one label)
   turned most of them into the corrected label; with it, one correction changes the answer
   for the clip corrected, never relabels the person's other expressions.

The user offset (3.) needs corrections of :data:`OFFSET_MIN_CLASSES` labels: one class's
mean is as much that expression as the person. The guard's default (4.) is the mix until
:data:`GUARD_TRUST_MIN` corrections are held out, the personal head after.

The defaults (``finetune``, ``anchor`` = :data:`DEFAULT_ANCHOR`, ``mix_k`` =
:data:`DEFAULT_MIX_K`, ``center`` = :data:`DEFAULT_CENTER`, :data:`ALT_ANCHORS`,
:data:`IDENTITY_EXPERT_WEIGHT`, :data:`IDENTITY_EXPERT_C`) were chosen
by ``benchmarks/personalization.py`` (docs/personalization.md).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from . import zoo
from .errors import InvalidInputError, ModelIntegrityError
from .heads import (
    BlendHead,
    CenteredHead,
    EvidenceGateHead,
    Head,
    IdentityExpertHead,
    PrototypeHead,
    StatPoolingHead,
    TrainableHead,
    head_from_arrays,
    head_to_arrays,
)
from .store import Store

__all__ = [
    "DEFAULT_ANCHOR",
    "DEFAULT_CENTER",
    "DEFAULT_EVIDENCE_GATE",
    "GATE_MIN_CLASSES",
    "GATE_OPEN_CLASSES",
    "GUARD_TRUST_MIN",
    "OFFSET_MIN_CLASSES",
    "RECALL",
    "DEFAULT_MIX_K",
    "DEFAULT_STRATEGY",
    "GUARD_MARGIN",
    "IDENTITY_EXPERT_C",
    "IDENTITY_EXPERT_WEIGHT",
    "STRATEGIES",
    "AdaptOptions",
    "AdaptReport",
    "Candidate",
    "Choice",
    "Personalized",
    "adapt_user",
    "fine_tune",
    "fit_personal",
    "guard",
    "load_personal_head",
    "load_replay",
    "personalize",
    "user_offset",
]

log = logging.getLogger(__name__)

#: Personal-model strategies of :func:`fit_personal`.
STRATEGIES = ("finetune", "prototype", "logistic")
DEFAULT_STRATEGY = "finetune"
#: Leave-one-out up to this many corrections; beyond, every :data:`HELD_OUT_EVERY`-th is held out.
LOO_MAX = 20
HELD_OUT_EVERY = 5


class Candidate(str, Enum):
    """The heads the guard chooses between (:func:`guard`)."""

    UNIVERSAL = "universal"
    """The universal head, on features not centred."""
    CENTRED = "centred"
    """The universal head on features centred on the user (:func:`user_offset`)."""
    MIX = "mix"
    """Universal and personal heads mixed, the personal weight growing with the evidence."""
    PERSONAL = "personal"
    """The personal head alone."""


class Choice(str):
    """What the guard chose: a :class:`Candidate` and, for a personal head fine-tuned with
    another anchor than the default one, that anchor (:attr:`alt_anchor`). It reads as its
    name where a string is wanted -- JSON, the command line, the keys of
    :attr:`AdaptReport.evidence` -- ``"universal"``, ``"centred"``, ``"mix"``, ``"personal"``
    or ``"personal@A"``; :meth:`parse` reads such a name back."""

    candidate: Candidate
    alt_anchor: float | None

    def __new__(cls, candidate: Candidate | str, alt_anchor: float | None = None) -> Choice:
        cand = Candidate(candidate)
        self = super().__new__(cls, cand.value if alt_anchor is None else f"{cand.value}@{alt_anchor:g}")
        self.candidate, self.alt_anchor = cand, alt_anchor
        return self

    def __getnewargs__(self) -> tuple[Candidate, float | None]:  # type: ignore[override]  # copies and pickles rebuild it from its parts
        return self.candidate, self.alt_anchor

    @classmethod
    def parse(cls, name: str) -> Choice:
        """The choice named ``name`` (``"personal@0.1"`` ...); InvalidInputError for another name."""
        kind, _, anchor = str(name).partition("@")
        try:
            return cls(kind, float(anchor) if anchor else None)
        except ValueError as e:
            raise InvalidInputError(f"not a guard choice: {name!r}") from e

    @property
    def is_personal(self) -> bool:
        """A personal head (at any anchor), not the universal head, centred or mixed."""
        return self.candidate is Candidate.PERSONAL


@dataclass
class AdaptReport:
    """What :meth:`Recognizer.adapt` did: what was chosen, and the evidence for it."""

    user: str
    accepted: bool
    """A new head was saved and is now active."""
    version: int | None
    """Active personal head version after adaptation (None: the universal head is used)."""
    n_corrections: int
    n_train: int
    """Corrections the saved head was fitted on (all of them)."""
    n_held_out: int
    """Corrections the guard scored (held out once each; 0 with a single correction)."""
    held_out_accuracy_before: float | None = None
    """The universal head's accuracy on the held-out corrections."""
    held_out_accuracy_after: float | None = None
    """The chosen candidate's accuracy on the held-out corrections."""
    classes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    reason: str = ""
    strategy: str = ""
    """How the personal head was fitted (:data:`STRATEGIES`)."""
    choice: Choice | None = None
    """What the guard chose (:class:`Choice`: ``"universal"``, ``"centred"``, ``"mix"``,
    ``"personal"`` or ``"personal@A"``, another anchor); ``None`` when nothing was fitted."""
    weight: float | None = None
    """The personal head's weight in the saved :class:`~emoadapt.heads.BlendHead`."""
    anchor: float | None = None
    """The fine-tune's pull toward the universal weights (fine-tune strategy)."""
    centered: bool = False
    """The saved head reads features centred on the user (:func:`user_offset`; ``center=``)."""
    guard: str = ""
    """How the candidates were scored (``"leave-one-out"``, ``"every 5th held out"``,
    ``"none"`` with one correction, ``"off"``)."""
    evidence: dict[str, float] = field(default_factory=dict)
    """Held-out accuracy of each candidate (``universal``, ``mix``, ``personal``, ``personal@A``)."""
    label_counts: dict[str, int] = field(default_factory=dict)
    """Corrections per label."""
    identity_expert: int = 0
    """Corrections the personal identity expert was fitted on (their faces' identity
    embeddings, :class:`~emoadapt.heads.IdentityExpertHead`); 0: no expert."""
    gated: bool = False
    """The saved head may change an answer only toward a corrected label
    (:class:`~emoadapt.heads.EvidenceGateHead`); False when every label has corrections or
    the universal head decides."""
    evidence_classes: list[str] = field(default_factory=list)
    """The labels the user's corrections cover."""

    def explanation(self) -> str:
        """What the user's model now does, in plain words (no parameter names)."""
        if not self.n_corrections:
            return "No corrections yet: the universal model answers."
        if not self.accepted:
            return "No new personal model was made: the universal model (or the previous personal model) answers."
        if self.choice is not None and self.choice.candidate is Candidate.UNIVERSAL:
            return (
                "Your corrections did not help on the ones held back to check them, so the universal model answers; "
                "your corrections are kept and count again at the next adaptation."
            )
        how = {
            Candidate.MIX: "The universal model still leads; your corrections nudge its answers",
            Candidate.CENTRED: "The universal model answers, adjusted to how your face looks overall",
        }.get(self.choice.candidate if self.choice is not None else Candidate.PERSONAL, "Your personal model answers")
        if self.centered:
            how += ", after adjusting for how your face looks overall"
        covered = ", ".join(self.evidence_classes)
        if self.gated and len(self.evidence_classes) < GATE_MIN_CLASSES:
            scope = (
                f". Your corrections show one expression only ({covered}), which says nothing yet about how your other "
                "expressions look: it changes the answer only for the clips you corrected (and near copies of them); "
                "the universal model decides the rest."
            )
        elif self.gated and set(self.evidence_classes) < set(self.classes):
            scope = f". It changes an answer only toward an expression you corrected ({covered}); for the others the universal model decides."
        else:
            scope = f". Your corrections cover every expression it knows ({covered})."
        if self.gated:
            scope += " A clip you corrected is answered as you said."
        sure = ""
        if self.held_out_accuracy_after is not None and self.n_held_out:
            sure = (
                f" Checked on {self.n_held_out} of your corrections it had not seen: right on "
                f"{round(100 * self.held_out_accuracy_after)} % (the universal model: {round(100 * (self.held_out_accuracy_before or 0))} %)."
            )
        elif self.n_corrections < GUARD_TRUST_MIN:
            sure = f" With {self.n_corrections} correction{'s' if self.n_corrections != 1 else ''} it cannot check itself yet, so it stays close to the universal model."
        return how + scope + sure

    def __post_init__(self) -> None:
        if isinstance(self.choice, str) and not isinstance(self.choice, Choice):  # a report read back from JSON (to_dict)
            self.choice = Choice.parse(self.choice) if self.choice else None

    @property
    def centred(self) -> bool:
        """Deprecated spelling of :attr:`centered`."""
        return self.centered

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values (``choice`` its name, ``""`` when nothing was fitted;
        ``centred`` repeats ``centered`` for readers of the former name)."""
        d = asdict(self)
        d["choice"] = "" if self.choice is None else str(self.choice)
        d["centred"] = self.centered
        return d

    def summary(self) -> str:
        """A few human-readable lines (what ``emoadapt adapt`` prints)."""
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.label_counts.items()))
        lines = [f"user {self.user}: {self.n_corrections} corrections ({counts or 'none'})"]
        if self.evidence:
            ev = "  ".join(f"{k} {v:.3f}" for k, v in self.evidence.items() if not k.endswith("log-likelihood"))
            ll = "  ".join(f"{k[: -len(' log-likelihood')]} {v:.2f}" for k, v in self.evidence.items() if k.endswith("log-likelihood"))
            lines.append(f"guard ({self.guard}, {self.n_held_out} held out), accuracy: {ev}")
            lines.append(f"  mean log-likelihood: {ll}")
        if self.choice:
            anchor = "" if self.anchor is None else f", anchor {self.anchor:g}"
            centred = ", features centred on the user" if self.centered else ""
            lines.append(f"chosen: {self.choice} (strategy {self.strategy}{anchor}, personal weight {self.weight:.2f}{centred})")
        if self.identity_expert:
            lines.append(f"identity expert: fitted on the faces of {self.identity_expert} corrections")
        if self.gated and len(self.evidence_classes) < GATE_MIN_CLASSES:
            lines.append("corrections of one label only: only the corrected clips (and near copies) change; the universal head decides the rest")
        elif self.gated and set(self.evidence_classes) < set(self.classes):
            lines.append(f"answers move only toward corrected labels ({', '.join(self.evidence_classes)}); the universal head decides the rest")
        state = f"head v{self.version} active" if self.accepted else "no new head"
        lines.append(f"{state}: {self.reason} ({self.seconds:.2f} s)")
        return "\n".join(lines)


#: Strength of the L2 pull toward the universal weights while fine-tuning personal heads.
#: Chosen with ``benchmarks/personalization.py`` (Taiwanese faces, CK+, CREMA-D, RAVDESS).
DEFAULT_ANCHOR = 1.0
#: Evidence scale of the guard's mix: the personal weight is ``n / (n + DEFAULT_MIX_K)`` (1 since the
#: evidence gate: with the gate, one correction may weigh half without relabelling other expressions).
DEFAULT_MIX_K = 1.0
#: Centre features on the user (:func:`user_offset`) before fitting and predicting.
DEFAULT_CENTER = True
#: Shrinkage of :func:`user_offset` estimated from ``c`` classes: ``k / (k + OFFSET_SHRINK)``
#: with ``k = c - OFFSET_MIN_CLASSES + 1``.
OFFSET_SHRINK = 1.0
#: :func:`user_offset` needs corrections of this many classes: one class's mean is as much
#: that expression as the person (on clips of one camera and setting, centring on it moves
#: every face of the person toward the corrected class).
OFFSET_MIN_CLASSES = 2
#: Whether the guard's other anchors (:data:`ALT_ANCHORS`) read centred features too.
ALT_CENTER = False
#: Another candidate replaces the personal head only with this many more held-out hits
#: (chosen with ``benchmarks/personalization.py``: 0 let noise pick candidates on CK+).
GUARD_MARGIN = 2
#: Held-out corrections the guard needs before the personal head is its default (fewer: the
#: mix, whose weight ``n / (n + mix_k)`` keeps the universal head in charge, is the default).
GUARD_TRUST_MIN = 5
#: Other anchors the guard tries for the fine-tune strategy (a weaker pull: more personal).
ALT_ANCHORS: tuple[float, ...] = (0.1,)
#: Wrap the installed head in an :class:`~emoadapt.heads.EvidenceGateHead`: its answer may
#: move away from the universal one only toward a label the user corrected.
DEFAULT_EVIDENCE_GATE = True
#: Corrections of this many labels before the gate lets the personal head move answers toward
#: them: corrections of one label only show no contrast (a confirmed "neutral" says nothing
#: about how this person looks surprised), so until then only the corrected clips themselves
#: (and their near copies) change.
GATE_MIN_CLASSES = 2
#: Corrections of this many labels open the gate for every label: with that much contrast the
#: personal head (centred on the user) also helps on the expressions not corrected yet (CK+,
#: leave-one-sequence-out, where the tested expression is never corrected: the gate closed cost
#: 0.807 -> 0.736; open from 4 labels 0.771, from 3 0.807 but the journeys lose their safety from k = 3:
#: docs/personalization.md, ``benchmarks/journeys.py``).
GATE_OPEN_CLASSES = 4
#: Cosine similarity of mean features from which the gate answers a clip with the label of a
#: corrected one (the same clip again or a near copy); chosen with ``benchmarks/journeys.py``
#: (docs/personalization.md, "The evidence gate").
RECALL = 0.985
#: Weight of the personal identity expert (:class:`~emoadapt.heads.IdentityExpertHead`) in the
#: installed head, when the user's corrections carry identity embeddings of two labels or more.
IDENTITY_EXPERT_WEIGHT = 0.5
#: Inverse L2 strength of the identity expert's softmax regression.
IDENTITY_EXPERT_C = 1.0


@dataclass(frozen=True)
class AdaptOptions:
    """How :func:`adapt_user` fits and checks a user's personal head (what
    :meth:`Recognizer.adapt <emoadapt.recognizer.Recognizer.adapt>` takes as keywords); the
    defaults are the module's constants."""

    strategy: str = DEFAULT_STRATEGY
    """How the personal head is fitted (:data:`STRATEGIES`)."""
    use_guard: bool = True
    """Let the guard choose between the universal head, the mix and the personal head(s);
    ``False`` takes the personal head."""
    anchor: float | None = DEFAULT_ANCHOR
    """The fine-tune's pull toward the universal weights (``None``: the head's own)."""
    mix_k: float = DEFAULT_MIX_K
    """Evidence scale of the mix: the personal weight is ``n / (n + mix_k)``."""
    center: bool = DEFAULT_CENTER
    """Centre features on the user (:func:`user_offset`)."""
    epochs: int | None = None
    """Fine-tuning epochs (``None``: the head's own)."""
    seed: int = 0
    """Random seed of the fit."""
    expert_weight: float = IDENTITY_EXPERT_WEIGHT
    """Weight of the identity expert (0: none)."""
    evidence_gate: bool = DEFAULT_EVIDENCE_GATE
    """Wrap the head in an :class:`~emoadapt.heads.EvidenceGateHead`."""


@dataclass(frozen=True)
class Personalized:
    """What :func:`personalize` chose and why (what :class:`AdaptReport` reports)."""

    choice: Choice
    """The guard's choice."""
    weight: float
    """The personal head's weight in the installed :class:`~emoadapt.heads.BlendHead`."""
    anchor: float | None
    """The fine-tune's anchor (``None`` for the other strategies)."""
    evidence: dict[str, float]
    """Held-out accuracy (and ``"<name> log-likelihood"``) of each candidate."""
    guard: str
    """How the candidates were scored (``"leave-one-out"``, ``"every 5th held out"``, ``"none"``, ``"off"``)."""
    n_held_out: int
    """Corrections the guard scored."""
    centered: bool
    """The head reads features centred on the user."""
    identity_expert: int
    """Corrections the identity expert was fitted on (0: no expert)."""
    gated: bool
    """The head is wrapped in an :class:`~emoadapt.heads.EvidenceGateHead`."""
    evidence_classes: list[str]
    """The labels the corrections cover."""

    def __getitem__(self, key: str) -> Any:
        """``info["choice"]`` ...: the fields by name, as the dict :func:`personalize` returned before (``"centred"`` too)."""
        return getattr(self, "centered" if key == "centred" else key)


def load_replay(name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(features (N, D), labels (N,))`` of a shipped replay set (sha256-verified, no pickles)."""
    path = zoo.model_path(name)
    try:
        with np.load(path, allow_pickle=False) as z:
            feats, labels = z["features"].astype(np.float32), z["labels"].astype(str)
    except (OSError, ValueError, KeyError) as e:
        raise ModelIntegrityError(f"replay set {name} unreadable: {e}") from e
    if feats.ndim != 2 or len(feats) != len(labels) or not np.isfinite(feats).all():
        raise ModelIntegrityError(f"replay set {name} is malformed")
    return feats, labels


def user_offset(clips: list[np.ndarray], labels: list[str], replay: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray | None:
    """What all of one user's frames share, relative to the universal training data.

    The mean, over the user's corrected classes that the ``replay`` set (universal training
    features) also has, of the user's class mean minus the replay's class mean: an estimate
    of the user's identity (and camera) in feature space that does not depend on which
    expressions they corrected, shrunk toward zero by ``k / (k + OFFSET_SHRINK)`` for ``k``
    classes (one class's mean still carries that expression). ``None`` without a replay set or a shared class (custom
    labels only): nothing to centre on.
    """
    if replay is None or not len(replay[0]) or not clips:
        return None
    feats, rlabels = replay
    rl = np.asarray(rlabels).astype(str)
    x = np.stack([np.asarray(c, np.float64).mean(axis=0) for c in clips])
    y = np.asarray(labels).astype(str)
    diffs = [x[y == k].mean(axis=0) - feats[rl == k].astype(np.float64).mean(axis=0) for k in np.unique(y) if (rl == k).any()]
    if not diffs or x.shape[1] != feats.shape[1]:
        return None
    k = len(diffs) - OFFSET_MIN_CLASSES + 1
    if k <= 0:
        return None
    return np.asarray(k / (k + OFFSET_SHRINK) * np.mean(diffs, axis=0))


def _center(clips: list[np.ndarray], offset: np.ndarray | None) -> list[np.ndarray]:
    return list(clips) if offset is None else [np.asarray(c, np.float64) - offset for c in clips]


def fine_tune(
    universal: TrainableHead,
    clips: list[np.ndarray],
    labels: list[str],
    *,
    replay: tuple[np.ndarray, np.ndarray] | None = None,
    anchor: float | None = DEFAULT_ANCHOR,
    epochs: int | None = None,
    seed: int = 0,
) -> TrainableHead:
    """A copy of ``universal`` fine-tuned on ``(clips, labels)`` (new labels become new classes).

    ``replay`` (features, labels): universal training samples; those of classes absent from
    ``labels`` are added to the fine-tuning data as one-frame clips.
    """
    clips, labels = list(clips), [str(v) for v in labels]
    if replay is not None:
        seen = set(labels)
        feats, rlabels = replay
        for f, lab in zip(feats, rlabels):
            if str(lab) not in seen:
                clips.append(np.asarray(f, np.float32)[None])
                labels.append(str(lab))
    head = universal.copy()
    params: dict[str, Any] = {"seed": seed}
    if anchor is not None:
        params["anchor"] = anchor
    if epochs is not None:
        params["epochs"] = epochs
    head.set_params(**{k: v for k, v in params.items() if k in head.get_params()})
    return head.partial_fit(clips, np.asarray(labels, dtype=object).astype(str))


def fit_personal(
    universal: TrainableHead,
    clips: list[np.ndarray],
    labels: list[str],
    *,
    strategy: str = DEFAULT_STRATEGY,
    replay: tuple[np.ndarray, np.ndarray] | None = None,
    anchor: float | None = DEFAULT_ANCHOR,
    epochs: int | None = None,
    seed: int = 0,
) -> TrainableHead:
    """The personal head of one user's ``(clips, labels)`` by ``strategy`` (:data:`STRATEGIES`).

    ``"finetune"``: :func:`fine_tune` of ``universal``. ``"prototype"``: a
    :class:`~emoadapt.heads.PrototypeHead` of the clips. ``"logistic"``: a softmax regression
    (:class:`~emoadapt.heads.StatPoolingHead`, mean pooling) trained from scratch on the
    user's clips only (a prototype head while they hold one label).
    """
    labels = [str(v) for v in labels]
    if strategy == "finetune":
        return fine_tune(universal, clips, labels, replay=replay, anchor=anchor, epochs=epochs, seed=seed)
    if strategy == "prototype" or (strategy == "logistic" and len(set(labels)) < 2):
        return PrototypeHead().fit(clips, labels)
    if strategy == "logistic":
        head = StatPoolingHead(pooling=("mean",), lr=0.05, epochs=epochs or 200, batch_size=64, l2=1e-2, early_stopping=False, seed=seed)
        return head.fit(clips, np.asarray(labels))
    raise InvalidInputError(f"unknown strategy {strategy!r}; choose from {STRATEGIES}")


_UNIVERSAL, _CENTRED, _MIX, _PERSONAL = (Choice(c) for c in Candidate)


def _weights(n: int, mix_k: float) -> dict[Candidate, float]:
    """The personal head's weight in the head each candidate stands for, with ``n`` corrections."""
    return {Candidate.UNIVERSAL: 0.0, Candidate.CENTRED: 0.0, Candidate.MIX: float(n) / (n + float(mix_k)), Candidate.PERSONAL: 1.0}


def _candidates(strategy: str, anchor: float | None, alt_anchors: tuple[float, ...], center: bool, alt_center: bool) -> list[tuple[Choice, float | None, bool]]:
    """The guard's personal heads ``(choice, anchor, centred)``, from the least to the most
    preferred on ties; the last (``"personal"``, fitted with ``anchor``) is also the one the
    mix blends."""
    alts = [a for a in alt_anchors if strategy == "finetune" and a != anchor]
    return [*((Choice(Candidate.PERSONAL, a), a, center and alt_center) for a in alts), (_PERSONAL, anchor, center)]


def _installed(universal: TrainableHead, personal: Head, weight: float, offset: np.ndarray | None) -> Head:
    """The head a candidate stands for: the blend, read on centred features when ``offset``."""
    blend = BlendHead(universal, personal, weight)
    return blend if offset is None else CenteredHead(blend, offset)


def guard(
    universal: TrainableHead,
    clips: list[np.ndarray],
    labels: list[str],
    *,
    mix_k: float = DEFAULT_MIX_K,
    alt_anchors: tuple[float, ...] = ALT_ANCHORS,
    anchor: float | None = DEFAULT_ANCHOR,
    center: bool = DEFAULT_CENTER,
    alt_center: bool = ALT_CENTER,
    **fit_kw: Any,
) -> tuple[Choice, dict[str, float], str, int]:
    """Choose between the universal head, the mix and the personal head(s) (see module docs).

    Returns ``(choice, held-out accuracy per candidate, scheme, corrections scored)``. The
    candidates are ``universal``, ``centred`` (the universal head on features centred on the
    user, :func:`user_offset`; only with ``center`` and a replay set), ``mix`` (weight
    ``n / (n + mix_k)``), ``personal`` and, for the fine-tune strategy, ``personal@A``
    (fine-tuned with anchor ``A`` of ``alt_anchors`` instead of ``anchor``); all but
    ``universal`` read centred features when ``center``. The offset and the personal heads
    are re-estimated without the held-out corrections. The most accurate wins; on ties a
    personal head goes before the mix, the mix before the centred universal head, that
    before the universal head, and between personal heads the higher mean log-likelihood of
    the held-out labels wins (then ``personal``); but another candidate replaces
    ``personal`` only with at least :data:`GUARD_MARGIN` more held-out hits. The evidence also lists each candidate's
    ``"<name> log-likelihood"``. With a single correction nothing can be held out: the mix is
    chosen (its weight, ``1 / (1 + mix_k)``, keeps the universal head in charge of what the
    one correction does not cover). ``fit_kw`` go to :func:`fit_personal`.
    """
    n = len(labels)
    if n < 2:
        return _MIX, {}, "none", 0
    folds = [np.array([i]) for i in range(n)] if n <= LOO_MAX else [np.arange(HELD_OUT_EVERY - 1, n, HELD_OUT_EVERY)]
    scheme = "leave-one-out" if n <= LOO_MAX else f"every {HELD_OUT_EVERY}th held out"
    w_mix = _weights(n - len(folds[0]), mix_k)[Candidate.MIX]
    centring = center and user_offset(clips, labels, fit_kw.get("replay")) is not None
    cands = _candidates(str(fit_kw.get("strategy", DEFAULT_STRATEGY)), anchor, alt_anchors, centring, alt_center)
    order = [_UNIVERSAL, *([_CENTRED] if centring else []), _MIX]
    first_personal = order.index(_MIX) + 1
    order = [*order[:first_personal], *(c for c, _, _ in cands)]
    hits = {k: 0 for k in order}
    loglik = {k: 0.0 for k in order}
    scored = sum(len(f) for f in folds)
    y = np.asarray(labels, dtype=str)

    def score(name: Choice, head: Head, test: list[np.ndarray], truth: np.ndarray) -> None:
        p = head.predict_proba(test)
        classes = np.asarray(head.classes_).astype(str)
        hits[name] += int(np.sum(classes[np.argmax(p, axis=1)] == truth))
        col = {c: i for i, c in enumerate(classes)}
        loglik[name] += float(sum(np.log(max(p[r, col[t]], BlendHead._FLOOR)) if t in col else np.log(BlendHead._FLOOR) for r, t in enumerate(truth)))

    for held in folds:
        keep = np.setdiff1d(np.arange(n), held)
        train, train_y = [clips[i] for i in keep], [labels[i] for i in keep]
        offset = user_offset(train, train_y, fit_kw.get("replay")) if centring else None
        test = [clips[i] for i in held]
        truth = y[held]
        for name, a, centred in cands:
            off = offset if centred else None
            personal = fit_personal(universal, _center(train, off), train_y, anchor=a, **fit_kw)
            score(name, _installed(universal, personal, 1.0, off), test, truth)
            if name == _PERSONAL:
                score(_UNIVERSAL, BlendHead(universal, personal, 0.0), test, truth)
                score(_MIX, _installed(universal, personal, w_mix, offset), test, truth)
                if centring:
                    score(_CENTRED, _installed(universal, personal, 0.0, offset), test, truth)
    acc: dict[str, float] = {k: hits[k] / scored for k in order}
    # most accurate; ties: a personal head over the mix over the centred universal head over
    # the universal one, and between personal heads, the higher mean log-likelihood
    choice = max(
        reversed(order),
        key=lambda k: (acc[k], order.index(k) >= first_personal, round(loglik[k] / scored, 9) if order.index(k) >= first_personal else 0.0, order.index(k)),
    )
    # the default a challenger must beat by GUARD_MARGIN held-out hits: the personal head once
    # there is evidence enough to trust it, before that the mix (the universal head in charge)
    default = _PERSONAL if scored >= GUARD_TRUST_MIN else _MIX
    if choice != default and hits[choice] - hits[default] < GUARD_MARGIN:
        choice = default
    acc.update({f"{k} log-likelihood": loglik[k] / scored for k in order})
    return choice, acc, scheme, scored


def personalize(
    universal: TrainableHead,
    clips: list[np.ndarray],
    labels: list[str],
    *,
    strategy: str = DEFAULT_STRATEGY,
    use_guard: bool = True,
    mix_k: float = DEFAULT_MIX_K,
    anchor: float | None = DEFAULT_ANCHOR,
    alt_anchors: tuple[float, ...] = ALT_ANCHORS,
    center: bool = DEFAULT_CENTER,
    alt_center: bool = ALT_CENTER,
    embeddings: list[np.ndarray | None] | None = None,
    identity_model: str = "",
    expert_weight: float = IDENTITY_EXPERT_WEIGHT,
    evidence_gate: bool = DEFAULT_EVIDENCE_GATE,
    fallback: Head | None = None,
    **fit_kw: Any,
) -> tuple[Head, Personalized]:
    """The head :func:`adapt_user` installs, from one user's ``(clips, labels)``, without a store.

    Returns ``(head, info)``: a :class:`~emoadapt.heads.BlendHead` of the universal and the
    personal head, inside a :class:`~emoadapt.heads.CenteredHead` when it reads features
    centred on the user (``center`` and a ``replay`` set, unless the guard chose the plain
    universal head); ``info`` (:class:`Personalized`) says what was chosen and why. ``use_guard=False`` skips the check and takes
    the personal head (weight 1). ``embeddings`` (one identity embedding or ``None`` per clip,
    of the identity model ``identity_model``): with embeddings of two labels or more, the
    head is wrapped in an :class:`~emoadapt.heads.IdentityExpertHead` of weight
    ``expert_weight`` fitted on them (``expert_weight=0``: no expert). ``fit_kw``
    (``replay``, ``epochs``, ``seed``) go to :func:`fit_personal`.
    """
    if len(clips) != len(labels) or not labels:
        raise InvalidInputError(f"need as many labels as clips, at least one ({len(clips)} clips, {len(labels)} labels)")
    fit_kw["strategy"] = strategy
    if use_guard:
        choice, evidence, scheme, scored = guard(
            universal, clips, labels, mix_k=mix_k, anchor=anchor, alt_anchors=alt_anchors, center=center, alt_center=alt_center, **fit_kw
        )
    else:
        choice, evidence, scheme, scored = _PERSONAL, {}, "off", 0
    offset = user_offset(clips, labels, fit_kw.get("replay")) if center and choice.candidate is not Candidate.UNIVERSAL else None
    chosen = {name: (a, c) for name, a, c in _candidates(strategy, anchor, alt_anchors, offset is not None, alt_center)}
    chosen_anchor, centred = chosen.get(choice, (anchor, offset is not None))
    offset = offset if centred else None
    weight = _weights(len(labels), mix_k)[choice.candidate]
    head: Head = _installed(universal, fit_personal(universal, _center(clips, offset), labels, anchor=chosen_anchor, **fit_kw), weight, offset)
    expert = _identity_expert(head, embeddings, labels, identity_model, expert_weight)
    if expert is not None:
        head = expert
    covered = sorted(set(labels))
    gated = choice.candidate is not Candidate.UNIVERSAL and evidence_gate
    if gated:
        memory = np.stack([np.asarray(c, np.float64).mean(axis=0) for c in clips])
        allowed = covered if len(covered) >= GATE_MIN_CLASSES else []
        if len(covered) >= GATE_OPEN_CLASSES:  # broad evidence: the personal head may decide every class
            allowed = sorted({str(c) for c in head.classes_})
        head = EvidenceGateHead(head, universal if fallback is None else fallback, allowed, memory, labels, recall=RECALL)
    return head, Personalized(
        choice=choice,
        weight=weight,
        anchor=chosen_anchor if strategy == "finetune" else None,
        evidence=evidence,
        guard=scheme,
        n_held_out=scored,
        centered=offset is not None,
        identity_expert=0 if expert is None else int(sum(e is not None for e in embeddings or [])),
        gated=gated,
        evidence_classes=covered,
    )


def _identity_expert(
    head: Head, embeddings: list[np.ndarray | None] | None, labels: list[str], identity_model: str, weight: float
) -> IdentityExpertHead | None:
    """``head`` with an identity expert fitted on the clips that have an embedding, or None
    (no weight, fewer than two labels embedded, or embeddings of different sizes)."""
    if not embeddings or not weight:
        return None
    if len(embeddings) != len(labels):
        raise InvalidInputError(f"need one embedding (or None) per clip ({len(labels)} clips, {len(embeddings)} embeddings)")
    have = {i: np.asarray(e, np.float64) for i, e in enumerate(embeddings) if e is not None}
    if len({labels[i] for i in have}) < 2 or len({e.shape for e in have.values()}) != 1:
        return None
    x = np.stack(list(have.values()))
    expert = IdentityExpertHead(head, weight=weight, C=IDENTITY_EXPERT_C, identity_model=identity_model)
    return expert.fit_expert(x, [labels[i] for i in have])


def load_personal_head(store: Store, user: str) -> Head | None:
    """The user's active personal head, or None (falls back to older versions when one is
    damaged or cannot be rebuilt, e.g. a future head format)."""
    loaded = store.active_head(user, build=lambda arrays, _meta: head_from_arrays(arrays))
    return None if loaded is None else loaded.head


def adapt_user(
    store: Store,
    universal: TrainableHead,
    user: str,
    *,
    model_version: str | None = None,
    replay: tuple[np.ndarray, np.ndarray] | None = None,
    identity_model: str | None = None,
    options: AdaptOptions | None = None,
    fallback: Head | None = None,
) -> AdaptReport:
    """Fit, check and install ``user``'s personal head from their stored corrections (see
    module docs), as ``options`` say (default :class:`AdaptOptions`).

    Only corrections recorded with ``model_version`` (the backbone that produced their
    features) are used when it is given: features of another backbone live in another space.
    ``replay``: universal training features replayed for uncorrected classes. With
    ``identity_model``, the identity embeddings that model stored with the corrections feed
    the personal identity expert (:func:`personalize`). ``fallback``: the head that answers
    strangers (it may read the clip's frame probabilities); where the evidence gate does not
    let the personal head decide, its answer is this head's (default: ``universal``).
    """
    t0 = time.perf_counter()
    opt = options or AdaptOptions()
    user_uid = store.user_uid(user)  # before the data: save_head refuses if the record changed
    if opt.strategy not in STRATEGIES:
        raise InvalidInputError(f"unknown strategy {opt.strategy!r}; choose from {STRATEGIES}")
    if model_version is None:
        feats, labels, ids = store.correction_data(user)
    else:
        keep = [r.id for r in store.corrections(user) if r.model_version == model_version]
        feats, labels, ids = store.correction_data(user, ids=keep) if keep else ([], [], [])
    labels = [str(lab) for lab in labels]
    n = len(ids)
    if n == 0:
        return AdaptReport(
            user=user,
            accepted=False,
            version=_active_version(store, user),
            n_corrections=0,
            n_train=0,
            n_held_out=0,
            reason="no corrections",
            strategy=opt.strategy,
            seconds=time.perf_counter() - t0,
        )
    order = np.argsort(ids)
    feats = [feats[i] for i in order]
    labels = [labels[i] for i in order]
    ids = [ids[i] for i in order]
    embs = store.correction_embeddings(user, identity_model, ids=ids) if identity_model else {}
    with_embeddings = [embs.get(i) for i in ids] if embs else None
    # AdaptOptions' fields are personalize's keywords, and Personalized's are the report's
    head, info = personalize(
        universal, feats, labels, replay=replay, embeddings=with_embeddings, identity_model=identity_model or "", fallback=fallback, **asdict(opt)
    )
    counts = {lab: labels.count(lab) for lab in sorted(set(labels))}
    report = AdaptReport(user=user, accepted=False, version=_active_version(store, user), n_corrections=n, n_train=n, label_counts=counts, **asdict(info))
    report.strategy = opt.strategy
    if info.evidence:
        report.held_out_accuracy_before = info.evidence[_UNIVERSAL]
        report.held_out_accuracy_after = info.evidence[info.choice]
    metrics: dict[str, Any] = {f"held_out_{k}": v for k, v in info.evidence.items()}
    metrics.update(n_corrections=n, n_train=n, n_held_out=info.n_held_out, weight=info.weight)
    meta = {
        "type": type(head).__name__,
        "strategy": opt.strategy,
        "choice": str(info.choice),
        "guard": info.guard,
        "anchor": info.anchor,
        "centred": info.centered,
        "identity_expert": info.identity_expert,
        "gated": info.gated,
    }
    version = store.save_head(user, head_to_arrays(head), meta=meta, metrics=metrics, trained_on=ids, user_uid=user_uid)
    report.accepted, report.version = True, version
    report.classes = [str(c) for c in head.classes_]
    report.reason = {
        Candidate.UNIVERSAL: "the personal evidence hurt held-out corrections: the universal head decides",
        Candidate.MIX: "universal and personal heads mixed, weighted by the evidence",
    }.get(info.choice.candidate, "the personal head did best on held-out corrections")
    if info.guard == "none":
        report.reason = "one correction, nothing to hold out: universal and personal heads mixed, weighted by the evidence"
    elif info.guard == "off":
        report.reason = "guard off: the personal head is used"
    report.seconds = time.perf_counter() - t0
    log.info("adapt %s: head v%d (%s, %s, weight %.2f) on %d corrections (%.2fs)", user, version, opt.strategy, info.choice, info.weight, n, report.seconds)
    return report


def _active_version(store: Store, user: str) -> int | None:
    for h in store.head_versions(user):
        if getattr(h, "status", None) == "active":
            return int(h.version)
    return None
