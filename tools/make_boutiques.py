"""Generate boutiques.json from bids_ketamine.cli.parser.build_parser().

Run after any change to the command line: ``python tools/make_boutiques.py > boutiques.json``
(tests/test_packaging.py checks that the file is this script's output).
"""
import argparse, json, re
from bids_ketamine import __version__
from bids_ketamine.cli import parser as cli

IMAGE = f"bidsketamine/bids_ketamine:{__version__}"
FILE_INPUTS = {"bids_dir", "bids_filters", "atlas_labels"}
NUMBER_RULES = {  # dest: (integer, minimum, exclusive-minimum, maximum)
    "nprocs": (True, 1, False, None), "omp_nthreads": (True, 1, False, None),
    "mem_gb": (False, 0, True, None), "b0_threshold": (False, 0, False, None),
    "dti_max_bval": (False, 0, True, None), "min_coverage": (False, 0, False, 1),
    "response_threshold": (False, 0, True, None), "n_permutations": (True, 0, False, None),
    "seed": (True, None, False, None),
}
MACHINE_DEPENDENT_DEFAULTS = {"nprocs"}
NAMES = {"bids_dir": "BIDS dataset", "output_dir": "Output (derivatives) directory",
         "analysis_level": "Analysis level", "bids_filters": "BIDS filter file",
         "verbosity": "Verbose logging", "longitudinal": "No longitudinal registration",
         "remission_thresholds": "Remission thresholds", "plugin_args": "Plugin arguments",
         "use_syn_sdc": "Fieldmap-less distortion correction (SyN-SDC)"}


def input_id(action: argparse.Action) -> str:
    """The descriptor's id of an option: its dest, ``no_`` before it for a store-false flag."""
    return f"no_{action.dest}" if isinstance(action, argparse._StoreFalseAction) else action.dest


p = cli.build_parser()
inputs, groups = [], []
for grp in p._action_groups:
    members = [input_id(a) for a in grp._group_actions if a.dest not in ("help", "version")]
    if grp.title in ("positional arguments", "options", "optional arguments") or not members:
        continue
    gid = re.sub(r"[^0-9a-zA-Z]+", "_", grp.title.lower()).strip("_")
    groups.append({"id": gid, "name": grp.title, "members": members})

for a in p._actions:
    if a.dest in ("help", "version"):
        continue
    ident = input_id(a)
    item = {"id": ident, "name": NAMES.get(a.dest, a.dest.replace("_", " ").capitalize()),
            "value-key": f"[{ident.upper()}]"}
    help_text = (a.help or "").replace("%(default)s", str(a.default))
    if not a.option_strings:
        item["optional"] = False
    else:
        longs = [o for o in a.option_strings if o.startswith("--")]
        item["command-line-flag"] = longs[0] if longs and a.dest != "verbosity" else a.option_strings[0]
        item["optional"] = True
    if isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._CountAction)):
        item["type"] = "Flag"
        if isinstance(a, argparse._CountAction):
            help_text += " (Boutiques passes it once: -v; give -vv on the command line)"
    elif a.choices is not None:
        item["type"] = "String"
        item["value-choices"] = list(a.choices)
    elif a.dest in FILE_INPUTS:
        item["type"] = "File"
    elif a.dest in NUMBER_RULES:
        integer, mn, excl, mx = NUMBER_RULES[a.dest]
        item["type"] = "Number"
        if integer: item["integer"] = True
        if mn is not None: item["minimum"] = mn
        if excl: item["exclusive-minimum"] = True
        if mx is not None: item["maximum"] = mx
    else:
        item["type"] = "String"
    if a.nargs in ("+", "*"):
        item["list"] = True
        item["min-list-entries"] = 1
    d = a.default
    if item["type"] != "Flag" and d not in (None, [], ()) and a.dest not in MACHINE_DEPENDENT_DEFAULTS:
        if item["type"] == "String" and not item.get("list") and not isinstance(d, str):
            d = str(d)
        item["default-value"] = list(d) if isinstance(d, (list, tuple)) else d
    if a.dest in MACHINE_DEPENDENT_DEFAULTS:
        help_text += " (default: the number of CPUs of the machine)"
    item["description"] = help_text
    exclusive = [other for group in p._mutually_exclusive_groups if a in group._group_actions
                 for other in group._group_actions if other is not a]
    if exclusive:  # options argparse refuses together (-v and -q)
        item["disables-inputs"] = [input_id(other) for other in exclusive]
    inputs.append(item)

cmd = "bids-ketamine " + " ".join(i["value-key"] for i in inputs)
O = "[OUTPUT_DIR]"
SES = "sub-*/ses-*/dwi/sub-*_ses-*"
outputs = [
    ("derivatives", "Derivatives directory", O, False, False, "the BIDS derivatives dataset written by both levels"),
    ("dataset_description", "Dataset description", f"{O}/dataset_description.json", False, True, "DatasetType derivative, GeneratedBy bids_ketamine (participant level)"),
    ("participant_reports", "Participant reports", f"{O}/sub-*.html", True, True, "one HTML visual report per participant"),
    ("brain_masks", "Brain masks", f"{O}/{SES}*_space-dwi_desc-brain_mask.nii.gz", True, True, "brain mask in each session's DWI space"),
    ("tensor_maps_dwi", "Tensor maps (DWI space)", f"{O}/{SES}*_space-dwi_model-tensor_param-*_dwimap.nii.gz", True, True, "FA, MD, AD, RD (diffusivities in um^2/ms) in DWI space"),
    ("tensor_maps_template", "Tensor maps (template space)", f"{O}/{SES}*_space-MNI*_model-tensor_param-*_dwimap.nii.gz", True, True, "FA and MD in template space"),
    ("roi_segmentations", "ROI segmentations", f"{O}/{SES}*_space-dwi_atlas-*_dseg.nii.gz", True, True, "the atlas ROIs in each session's DWI space"),
    ("roi_statistics", "ROI statistics", f"{O}/{SES}*_atlas-*_model-tensor_roistats.tsv", True, True, "roi, param, mean, median, std, n_voxels, coverage per ROI and tensor parameter"),
    ("tissue_statistics", "Tissue statistics", f"{O}/{SES}*_model-tensor_tissuestats.tsv", True, True, "tissue, param, median, n_voxels: each tensor map's median over the brain mask, the white and the grey matter (a whole-brain change between sessions)"),
    ("group_change", "Change table", f"{O}/group/change.tsv", False, True, "group level: per participant, ROI and parameter, baseline, follow-up and change with clinical scores"),
    ("group_models", "Model table", f"{O}/group/models.tsv", False, True, "group level: one row per model term (treatment x change models), with FDR-corrected p-values"),
    ("group_models_json", "Model description", f"{O}/group/models.json", False, True, "group level: formulas, options, software versions and exclusions"),
    ("group_report", "Group report", f"{O}/group/report.html", False, True, "group level: HTML report"),
]
desc = {
    "name": "bids-ketamine",
    "tool-version": __version__,
    "schema-version": "0.5",
    "description": p.description,
    "author": "bids_ketamine developers",
    "command-line": cmd,
    "container-image": {"type": "docker", "image": IMAGE},
    "inputs": inputs,
    "groups": groups,
    "output-files": [
        {"id": i, "name": n, "path-template": t, "list": l, "optional": o, "description": d}
        for i, n, t, l, o, d in outputs],
    "suggested-resources": {"cpu-cores": 4, "ram": 8, "walltime-estimate": 7200},
    "tags": {"domain": ["neuroinformatics", "diffusion-mri", "bids-app"], "toolbox": "nipype"},
}
for out in desc["output-files"]:
    if not out["list"]:
        del out["list"]
print(json.dumps(desc, indent=2))
