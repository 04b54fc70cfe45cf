"""Several concepts (subjects or styles) in one job (no torch: runs in the service and workers).

A concept is exactly what the single-subject fields of a DreamBoothConfig describe: pictures,
identifier, class noun, prompts, prior preservation. So each concept is checked by the same
`options.resolve` as a one-subject job, on the job's config with that concept's fields put in
(`concept_config`); its violations are renamed to the concept's path
(`config.instance_images[1].data` -> `config.concepts[1].instance_images[1].data`), the job's
own are told once. What only several concepts can get wrong is checked here: a duplicated
identifier, the single-subject fields set beside `concepts`, job-level prompts that use a
placeholder (whose concept would it be?), totals over all concepts.

The resolved config keeps, per concept, its pictures' stored file names and captions (no bytes;
a picture of concept i is stored as `c<i>-<name>` so that two concepts may both have a
`0.png`), its filled-in prompts and its own prior preservation (the job's copied in when it set
none); every validation prompt moves to the job's `validation_prompts`. Workers read a
resolved job back as one single-subject config per concept (`job_concepts`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from boothstudio.services.diffusion import samplers  # the sampler table only: imports no torch
from boothstudio.services.trainer.identifiers import Vocabulary, pick_identifier
from boothstudio.services.trainer.inputs import filename_problem
from boothstudio.services.trainer.options import Limits, Resolved, resolve
from boothstudio.services.trainer.templates import MAX_PROMPT_CHARS, TemplateError, fill
from boothstudio.shared.errors import FieldViolation, InvalidArgument, clip
from boothstudio.v1 import trainer_pb2

MAX_CONCEPTS = 16
MAX_REPEATS = 1000
#: the Catalog keeps a model's trigger phrase in at most this many characters
MAX_TRIGGER_CHARS = 512
#: how the concepts' trigger phrases are joined into the model's one trigger phrase
TRIGGER_SEPARATOR = ", "
#: a concept's fields among the single-subject ones of DreamBoothConfig
SINGLE_SUBJECT_FIELDS = ("instance_images", "dataset_id", "identifier", "class_noun",
                         "instance_prompt", "class_prompt")
_CONCEPT_PATHS = (*SINGLE_SUBJECT_FIELDS, "validation_prompts")

Images = list[tuple[bytes, str, str]]  # data, file name, caption


def stored_name(index: int, name: str) -> str:
    """The file name of concept `index`'s picture `name` in the job folder."""
    return f"c{index}-{name}"


def concept_config(config: trainer_pb2.DreamBoothConfig,
                   index: int) -> trainer_pb2.DreamBoothConfig:
    """The one-subject config of concept `index`: the job's settings with the concept's
    pictures, identifier, class, prompts and prior preservation (when it has its own)."""
    concept = config.concepts[index]
    single = trainer_pb2.DreamBoothConfig()
    single.CopyFrom(config)
    single.ClearField("concepts")
    for name in SINGLE_SUBJECT_FIELDS:
        single.ClearField(name)  # type: ignore[arg-type]
    single.instance_images.extend(concept.instance_images)
    single.dataset_id = concept.dataset_id
    single.identifier = concept.identifier
    single.class_noun = concept.class_noun
    single.instance_prompt = concept.instance_prompt
    single.class_prompt = concept.class_prompt
    if concept.HasField("prior_preservation"):
        single.prior_preservation.CopyFrom(concept.prior_preservation)
    del single.validation_prompts[:]
    single.validation_prompts.extend(concept.validation_prompts)
    return single


def job_concepts(config: trainer_pb2.DreamBoothConfig) -> list[trainer_pb2.DreamBoothConfig]:
    """A resolved job as one single-subject config per concept (a one-subject job: itself)."""
    if not config.concepts:
        return [config]
    return [concept_config(config, i) for i in range(len(config.concepts))]


def trigger_phrase(config: trainer_pb2.DreamBoothConfig) -> str:
    """The phrase(s) that call up a resolved job's subject(s): each concept's instance prompt,
    joined by TRIGGER_SEPARATOR."""
    if not config.concepts:
        return config.instance_prompt
    return TRIGGER_SEPARATOR.join(c.instance_prompt for c in config.concepts)


def concept_identifiers(prompt: str, config: trainer_pb2.DreamBoothConfig) -> list[str]:
    """Identifiers of the job's concepts that `prompt` names (as words)."""
    words = set(prompt.lower().replace(",", " ").split())
    idents = [c.identifier for c in config.concepts] if config.concepts else [config.identifier]
    return [i for i in idents if i and i.lower() in words]


def _concept_path(index: int, field: str, own_prior: bool) -> str | None:
    """`field` (config.x...) renamed to concept `index`'s path, or None when it is the job's."""
    rest = field.removeprefix("config.")
    head = rest.split(".")[0].split("[")[0]
    if head in _CONCEPT_PATHS or (head == "prior_preservation" and own_prior):
        return f"config.concepts[{index}].{rest}"
    return None


def resolve_job(config: trainer_pb2.DreamBoothConfig, *, base_model: dict, limits: Limits,
                vocab: Vocabulary | None = None,
                dataset_images: Mapping[int, Images] | None = None) -> Resolved:
    """`options.resolve` for a one-subject job (`dataset_images[-1]`: its dataset's pictures);
    with concepts, each concept resolved as one (`dataset_images[i]`: concept i's) and the
    job put together again. InvalidArgument names every bad field at once."""
    datasets = dict(dataset_images or {})
    if not config.concepts:
        return resolve(config, base_model=base_model, limits=limits, vocab=vocab,
                       dataset_images=datasets.get(-1))
    bad: list[FieldViolation] = []

    def violation(field: str, description: str) -> None:
        if not any(v.field == field and v.description == description for v in bad):
            bad.append(FieldViolation(field, description))

    for name in SINGLE_SUBJECT_FIELDS:
        if (len(getattr(config, name)) if name == "instance_images" else getattr(config, name)):
            violation(f"config.{name}", "give each subject in config.concepts (or use the "
                      "single-subject fields without concepts, not both)")
    if len(config.concepts) > MAX_CONCEPTS:
        violation("config.concepts", f"at most {MAX_CONCEPTS} concepts")
    concepts = list(config.concepts[:MAX_CONCEPTS])
    job = trainer_pb2.DreamBoothConfig()
    job.CopyFrom(config)
    if not job.HasField("seed"):  # one seed for the job, not one per concept
        import random

        job.seed = random.SystemRandom().randrange(2**31)

    # identifiers: each its own; an empty one is picked, avoiding every word the job uses
    warnings: list[tuple[str, str, str]] = []
    taken: dict[str, int] = {}
    avoid: set[str] = set()
    for c in concepts:
        avoid |= {c.class_noun.strip().lower(), c.identifier.lower(),
                  *(w.lower() for w in c.instance_prompt.split())}
    for i, c in enumerate(concepts):
        ident = c.identifier.lower()
        if ident and ident in taken:
            violation(f"config.concepts[{i}].identifier",
                      f"{c.identifier!r} is already concepts[{taken[ident]}]'s identifier: each "
                      "concept needs its own")
        elif ident:
            taken[ident] = i
    for i, c in enumerate(concepts):
        if not c.identifier:
            picked = pick_identifier(vocab, avoid | set(taken))
            job.concepts[i].identifier = picked
            taken.setdefault(picked, i)
            warnings.append(("IDENTIFIER_CHOSEN", f"identifier {picked!r} chosen (a single rare "
                             "token)", f"config.concepts[{i}].identifier"))
        if not 0 <= c.repeats <= MAX_REPEATS:
            violation(f"config.concepts[{i}].repeats", f"must be between 0 and {MAX_REPEATS} "
                      f"(0 = 1), got {c.repeats}")

    # job-level prompts name no concept's placeholder
    plain: list[str] = []
    for k, p in enumerate(job.validation_prompts):
        field = f"config.validation_prompts[{k}]"
        if len(p) > MAX_PROMPT_CHARS:
            violation(field, f"at most {MAX_PROMPT_CHARS} characters")
            continue
        try:
            text = fill(p, {"identifier": "\0", "class_noun": "\0"})
        except TemplateError as exc:
            violation(field, str(exc))
            continue
        if "\0" in text:
            violation(field, "with concepts, {identifier} and {class_noun} do not say which "
                      "concept they mean: write the words out, or list the prompt under "
                      "config.concepts[i].validation_prompts")
            continue
        plain.append(" ".join(text.split()))
    gen = job.prior_preservation.generation
    try:  # the job's sampler draws the samples even when every concept has its own prior
        samplers.resolve(gen.sampler, gen.schedule)
    except samplers.SamplerError as exc:
        violation(f"config.prior_preservation.generation.{exc.field}", clip(str(exc), 300))

    resolved: list[Resolved | None] = []
    job_warnings: list[list[tuple[str, str, str]]] = []
    for i in range(len(concepts)):
        single = concept_config(job, i)
        own_prior = job.concepts[i].HasField("prior_preservation")
        try:
            r = resolve(single, base_model=base_model, limits=limits, vocab=vocab,
                        dataset_images=datasets.get(i))
        except InvalidArgument as exc:
            for v in exc.violations:
                violation(_concept_path(i, v.field, own_prior) or v.field, v.description)
            resolved.append(None)
            continue
        resolved.append(r)
        mine = []
        for reason, message, field in r.warnings:
            path = _concept_path(i, field, own_prior)
            if path is not None:
                warnings.append((reason, message, path))
            else:
                mine.append((reason, message, field))
        job_warnings.append(mine)
    # a job-level remark made for every concept is the job's (masks missing in one concept
    # only are no remark about the job)
    if job_warnings:
        warnings += [w for w in job_warnings[0] if all(w in ws for ws in job_warnings[1:])]

    done = [r for r in resolved if r is not None]
    total_images = sum(len(r.images) for r in done)
    if total_images > limits.max_instance_images:
        violation("config.concepts", f"{total_images} instance images in all is more than the "
                  f"limit of {limits.max_instance_images}")
    if bad or len(done) != len(concepts):
        raise InvalidArgument(violations=bad)

    out = trainer_pb2.DreamBoothConfig()
    out.CopyFrom(done[0].config)  # the job's settings, resolved
    for name in SINGLE_SUBJECT_FIELDS:
        out.ClearField(name)  # type: ignore[arg-type]
    out.ClearField("concepts")
    out.prior_preservation.CopyFrom(job.prior_preservation)
    out.prior_preservation.ClearField("class_prompts")  # filled in per concept
    images: Images = []
    prompts: list[str] = []
    for i, r in enumerate(done):
        rc = r.config
        concept = out.concepts.add(
            dataset_id=rc.dataset_id, identifier=rc.identifier, class_noun=rc.class_noun,
            instance_prompt=rc.instance_prompt, class_prompt=rc.class_prompt,
            repeats=job.concepts[i].repeats or 1)
        concept.prior_preservation.CopyFrom(rc.prior_preservation)
        for k, (data, name, caption) in enumerate(r.images):
            stored = stored_name(i, name)
            problem = filename_problem(stored)
            if problem:
                where = (f"instance_images[{k}].filename" if job.concepts[i].instance_images
                         else "dataset_id")
                violation(f"config.concepts[{i}].{where}", f"{name!r} as {stored!r}: {problem}")
            images.append((data, stored, caption))
            concept.instance_images.add(filename=stored, caption=caption)
        prompts += [p for p in rc.validation_prompts if p not in prompts]
    prompts += [p for p in plain if p not in prompts]
    if len(prompts) > limits.max_validation_prompts:
        violation("config.validation_prompts", f"{len(prompts)} prompts with the concepts' own: "
                  f"at most {limits.max_validation_prompts}")
    del out.validation_prompts[:]
    out.validation_prompts.extend(prompts)
    trigger = trigger_phrase(out)
    if len(trigger) > MAX_TRIGGER_CHARS:
        violation("config.concepts", f"the concepts' instance prompts joined are "
                  f"{len(trigger)} characters, more than the {MAX_TRIGGER_CHARS} a model's "
                  "trigger phrase holds")
    if bad:
        raise InvalidArgument(violations=bad)
    return Resolved(out, warnings, trigger, images)


def concepts_dataset_ids(config: trainer_pb2.DreamBoothConfig) -> dict[int, str]:
    """Which uploaded dataset each part of a job reads: -1 for a one-subject job's, i for
    concept i's (only those given by dataset_id alone)."""
    if not config.concepts:
        return ({-1: config.dataset_id}
                if config.dataset_id and not config.instance_images else {})
    return {i: c.dataset_id for i, c in enumerate(config.concepts[:MAX_CONCEPTS])
            if c.dataset_id and not c.instance_images}


__all__: Sequence[str] = [
    "MAX_CONCEPTS", "TRIGGER_SEPARATOR", "concept_config", "concept_identifiers",
    "concepts_dataset_ids", "job_concepts", "resolve_job", "stored_name", "trigger_phrase",
]
