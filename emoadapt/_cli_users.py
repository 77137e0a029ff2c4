"""The command handlers of user management: correct, adapt, models, export, users, forget."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from ._cli_common import _list_faces, _plural, _recognizer, _sampling, _user
from .errors import EmoadaptError, MultipleFacesError

log = logging.getLogger("emoadapt.cli")


#: what each of the guard's choices means for the user, in plain words (no parameter names)
_CHOICE_WORDS = {
    "universal": "the universal model answers (the corrections did not help on the ones held back)",
    "centred": "the universal model answers, adjusted to how the face looks overall",
    "mix": "the universal model answers, nudged by the corrections",
    "personal": "the personal model answers",
}


def _choice_words(choice: str | None) -> str:
    kind = str(choice or "").partition("@")[0]  # "personal@0.1": a personal model fitted another way
    return _CHOICE_WORDS.get(kind, "the personal model answers")


def _how_chosen(guard: str | None, held_out: int) -> str:
    """How the guard chose, in a few plain words."""
    if guard == "none":
        return "one correction: nothing to check it on yet"
    if guard == "off":
        return "taken without a check"
    if not held_out:
        return "not checked"
    return f"chosen after checking on {_plural(held_out, 'correction')} it had not seen"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {label}" for label, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) or "none"


def _model_line(rep: Any) -> str:
    """One plain line: which personal model is active now and, in a word, how it was chosen."""
    if not rep.accepted:
        active = f"personal model v{rep.version} stays active" if rep.version else "the universal model answers"
        return f"no new personal model for {rep.user} ({'no corrections yet' if not rep.n_corrections else 'nothing new to learn'}): {active}"
    return f"personal model v{rep.version} is now active for {rep.user}: {_choice_words(rep.choice)} ({_how_chosen(rep.guard, rep.n_held_out)})"


def cmd_correct(args: argparse.Namespace) -> int:
    _user(args)
    rec = _recognizer(args, adapt_every=args.adapt_every)
    try:
        c = rec.correct(args.clip, args.label, user=args.user, force=args.force, new_label=args.new_label, face=args.face, **_sampling(args))
    except MultipleFacesError as e:  # a new name, in a clip of several faces
        _list_faces(args.clip, e.faces, f"enrol {args.user} from")
        return 2
    print(f"correction {c.id} recorded for {c.user} as {c.label}")
    if c.adapt_report is not None:  # this correction triggered the automatic adaptation: say what is active now
        rep = c.adapt_report
        print(f"adapted after {_plural(rep.n_corrections, 'correction')}: {_model_line(rep)}")
        print(rep.explanation())
    if c.adapt_error is not None:  # the correction is stored: exit status 0, so that no script retries it
        log.warning(
            "automatic adaptation failed (%s: %s); the correction is kept; run `emoadapt adapt %s` later", type(c.adapt_error).__name__, c.adapt_error, c.user
        )
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    _user(args)
    rep = _recognizer(args).adapt(args.user)
    if args.json:
        json.dump({**rep.to_dict(), "explanation": rep.explanation()}, sys.stdout, indent=2)
        print()
        return 0
    print(f"{rep.user}: {_plural(rep.n_corrections, 'correction')} ({_counts(rep.label_counts)})")
    print(_model_line(rep))
    if args.verbose:  # the guard's evidence and the technical choice
        print(rep.summary())
    print(rep.explanation())  # what the user's model now does, in plain words
    return 0


def _user_models(rec: Any, user: str) -> dict[str, Any]:
    """What ``emoadapt models USER`` shows: the user's corrections and every personal model
    version with its evidence, read from the store (nothing is trained or written)."""
    from .store import normalize_user_name

    user = normalize_user_name(user)
    store = rec.store
    if not store.has_user(user):
        from .errors import UnknownUserError

        raise UnknownUserError(f"unknown user {user!r}")
    versions = []
    for h in store.head_versions(user):
        m = dict(h.metrics or {})
        try:
            meta = store.load_head(user, int(h.version)).meta
        except EmoadaptError as e:  # a damaged file: its record is still shown
            log.warning("personal model v%s of %r cannot be read (%s: %s)", h.version, user, type(e).__name__, e)
            meta = {}
        choice = meta.get("choice")
        evidence = {k[len("held_out_") :]: v for k, v in m.items() if k.startswith("held_out_") and not k.endswith("log-likelihood")}
        order = list(_CHOICE_WORDS)  # universal, centred, mix, personal (then other personal fits)
        evidence = dict(
            sorted(evidence.items(), key=lambda kv: (order.index(kv[0].partition("@")[0]) if kv[0].partition("@")[0] in order else len(order), kv[0]))
        )
        versions.append(
            {
                "version": int(h.version),
                "status": h.status,
                "created": h.created,
                "corrections": int(m.get("n_corrections", h.n_trained)),
                "choice": choice,
                "guard": meta.get("guard"),
                "held_out": int(m.get("n_held_out", 0)),
                "held_out_accuracy_before": evidence.get("universal"),
                "held_out_accuracy_after": evidence.get(str(choice)) if choice else None,
                "evidence": evidence,
                "what_it_does": _choice_words(choice),
                "identity_expert": int(meta.get("identity_expert") or 0),
                "gated": bool(meta.get("gated", False)),
            }
        )
    return {
        "user": user,
        "corrections": store.label_counts(user),
        "pending": store.count_since_last_head(user),
        "adapt_every": rec.adapt_every,
        "versions": versions,
    }


def cmd_models(args: argparse.Namespace) -> int:
    """Show a user's personal models and their evidence, without training anything."""
    import time as _time

    _user(args)
    info = _user_models(_recognizer(args), args.user)
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        print()
        return 0
    n = sum(info["corrections"].values())
    print(f"{info['user']}: {_plural(n, 'correction')} ({_counts(info['corrections'])}), {info['pending']} not learnt from yet")
    active = [v for v in info["versions"] if v["status"] == "active"]
    if not info["versions"]:
        print(
            "no personal model yet: the universal model answers"
            + (f" (one is made at {info['adapt_every']} corrections, or by emoadapt adapt)" if info["adapt_every"] else " (emoadapt adapt makes one)")
        )
    elif not active:
        print("no personal model is active: the universal model answers")
    for v in reversed(info["versions"]):
        when = _time.strftime("%Y-%m-%d %H:%M", _time.localtime(v["created"]))
        acc = ""
        if v["held_out_accuracy_after"] is not None and v["held_out"]:
            acc = f"; right on {round(100 * v['held_out_accuracy_after'])} % of {_plural(v['held_out'], 'correction')} it had not seen (universal model {round(100 * (v['held_out_accuracy_before'] or 0))} %)"
        print(f"v{v['version']}\t{v['status']}\t{when}\tfrom {_plural(v['corrections'], 'correction')}: {v['what_it_does']}{acc}")
        if args.verbose and v["evidence"]:
            print("\theld-out accuracy of each candidate: " + "  ".join(f"{k} {val:.3f}" for k, val in v["evidence"].items()))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a user's model (or, without USER, the universal one) for phone apps."""
    _user(args)
    rep = _recognizer(args).export(args.user, args.output)
    print(rep.summary())
    return 0


def cmd_users(args: argparse.Namespace) -> int:
    rec = _recognizer(args)
    stale = rec.reenroll_needed()
    users = rec.users()
    if not users:
        print("no users enrolled (emoadapt enroll NAME CLIP, or emoadapt correct CLIP LABEL --user NAME, enrols one)")
        return 0
    # users a store upgrade renamed (names stored before they were normalised), see Store.renamed_users
    renamed = {r.name: r for r in rec.store.renamed_users()}
    failed = 0
    for u in users:
        try:
            n = _plural(len(rec.corrections(u)), "correction")
            faces = rec.store.embeddings(u, model=rec.identity).get(u)
            n += f"\t{_plural(0 if faces is None else len(faces), 'face embedding')}"
        except EmoadaptError as e:  # one unreadable user never hides the others
            log.warning("cannot read the corrections of %r: %s: %s", u, type(e).__name__, e)
            n, failed = "corrections unreadable", failed + 1
        note = f"\tre-enrol needed (enrolled with {', '.join(stale[u])} only)" if u in stale else ""
        if u in renamed:
            r = renamed[u]
            apart = f"; kept apart from {r.normal_form!r}, another user" if r.kept_apart and r.normal_form else ""
            note += f"\tstored as {r.former_name!r} before the store upgrade{apart}"
        print(f"{u}\t{n}{note}")
    return 1 if failed else 0


def cmd_forget(args: argparse.Namespace) -> int:
    given = args.user  # the store gets the name as given: one a store upgrade gave to another user is refused
    _user(args)
    rep = _recognizer(args).forget(given)
    print(
        f"forgot {args.user}: {_plural(rep.corrections, 'correction')}, {_plural(rep.embeddings, 'face embedding')} "
        f"and {_plural(rep.heads, 'personal model')} removed"
    )
    return 0
