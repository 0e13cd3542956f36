"""MONAI Deploy application for the fixed-class MASS segmenter of ``bundles/mass_fewshot``.

    .venv-deploy/bin/python apps/deploy/app.py -i INPUT -o OUTPUT -m BUNDLE

``INPUT`` is a DICOM study folder (one or more series; the MR/CT series are segmented) or a NIfTI file;
``BUNDLE`` an exported bundle folder (``scripts/export_bundle.py ... --weights model.pt --torchscript``:
``configs/``, ``models/model.ts``, the ``components`` it needs). The bundle's own ``configs/inference.json``
(preprocessing, inferer, postprocessing) runs inside MONAI Deploy's ``MonaiBundleInferenceOperator``, so the
label map equals what ``monai.bundle run`` writes. Output: ``<stem>_seg.nii.gz`` on the input grid, and for
DICOM input a DICOM SEG (one segment per class of the bundle's ``channel_def``) beside it.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application, Image, IOType
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_seg_writer_operator import DICOMSegmentationWriterOperator, SegmentDescription
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator
from monai.deploy.operators.dicom_series_to_volume_operator import DICOMSeriesToVolumeOperator
from monai.deploy.operators.monai_bundle_inference_operator import (
    BundleConfigNames,
    IOMapping,
    MonaiBundleInferenceOperator,
)
from pydicom.sr.codedict import codes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from operators import LabelMapNiftiWriterOperator, NiftiVolumeLoaderOperator  # noqa: E402

#: series the app segments: MR or CT (the bundle's modality decides what is sensible)
SERIES_RULES = json.dumps(
    {
        "selections": [
            {"name": "MR or CT series", "conditions": {"Modality": "(?i)(MR|CT)", "SeriesDescription": "(.*?)"}}
        ]
    }
)


# class names whose SNOMED CT concept is not their CamelCase form in pydicom's code dictionary
SNOMED_NAMES = {
    "lateral_ventricles": "LateralVentricle",  # 66720007
    "cerebellum_cortex": "CerebellarCortex",  # 25991003
    "ventricles": "LateralVentricle",
}


def structure_code(name: str) -> Any:
    """The SNOMED CT code of a class name (``codes.SCT``); the generic "Anatomical Structure" with a
    warning when pydicom's dictionary has no concept for it."""
    camel = SNOMED_NAMES.get(name.lower()) or "".join(part.capitalize() for part in name.split("_"))
    code = getattr(codes.SCT, camel, None)
    if code is None:
        logging.getLogger(__name__).warning("no SNOMED CT code for class %r: DICOM SEG says Anatomical Structure", name)
        return codes.SCT.AnatomicalStructure
    return code


def segment_descriptions(bundle: Path) -> list[SegmentDescription]:
    """One DICOM SEG segment per class of the bundle's label values 1..N (``post_processed_outputs``
    ``channel_def``; ``outputs`` when the bundle has no post-processed description), in order."""
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    formats = meta["network_data_format"]
    channel_def = formats.get("post_processed_outputs", formats["outputs"])["pred"]["channel_def"]
    version = str(meta.get("version", ""))
    out = []
    for value in sorted(int(k) for k in channel_def):
        if value == 0:
            continue
        name = str(channel_def[str(value)])
        out.append(
            SegmentDescription(
                segment_label=name[:64],
                segmented_property_category=codes.SCT.AnatomicalStructure,
                segmented_property_type=structure_code(name),
                algorithm_name="MASS few-shot segmentation (mass_fewshot bundle)",
                algorithm_family=codes.DCM.ArtificialIntelligence,
                algorithm_version=version[:64] or "unknown",
            )
        )
    return out


class MASSSegmentationApp(Application):
    """DICOM series or NIfTI -> mass_fewshot bundle -> NIfTI label map (+ DICOM SEG for DICOM input)."""

    def compose(self) -> None:
        context = Application.init_app_context(self.argv)  # -i/-o/-m, else the HOLOSCAN_* environment
        source, output, bundle = Path(context.input_path), Path(context.output_path), Path(context.model_path)
        if not (bundle / "configs" / "inference.json").is_file():
            raise FileNotFoundError(f"{bundle}: not a bundle folder (no configs/inference.json); pass it with -m")
        # The SDK's model factory wraps a bundle folder into a generic Model without a predictor; without it the
        # bundle operator takes its directory-bundle path and loads the folder's models/model.ts itself.
        context.models = None
        infer = MonaiBundleInferenceOperator(
            self,
            input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
            output_mapping=[IOMapping("pred", Image, IOType.IN_MEMORY)],
            app_context=context,
            bundle_config_names=BundleConfigNames(config_names=["inference"]),
            bundle_path=bundle,
            name="mass_fewshot_op",
        )
        if source.is_file():
            stem = source.name.split(".")[0]
            loader = NiftiVolumeLoaderOperator(self, CountCondition(self, 1), input_path=source, name="nifti_loader")
            self.add_flow(loader, infer, {("image", "image")})
        elif source.is_dir():
            stem = source.name
            study = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=source, name="dicom_loader")
            select = DICOMSeriesSelectorOperator(self, rules=SERIES_RULES, name="series_selector")
            to_volume = DICOMSeriesToVolumeOperator(self, name="series_to_volume")
            seg_writer = DICOMSegmentationWriterOperator(
                self,
                segment_descriptions=segment_descriptions(bundle),
                custom_tags={"SeriesDescription": "MASS few-shot segmentation, research use only"},
                output_folder=output,
                name="dicom_seg_writer",
            )
            self.add_flow(study, select, {("dicom_study_list", "dicom_study_list")})
            self.add_flow(select, to_volume, {("study_selected_series_list", "study_selected_series_list")})
            self.add_flow(to_volume, infer, {("image", "image")})
            self.add_flow(select, seg_writer, {("study_selected_series_list", "study_selected_series_list")})
            self.add_flow(infer, seg_writer, {("pred", "seg_image")})
        else:
            raise FileNotFoundError(f"{source}: input is neither a NIfTI file nor a DICOM folder")
        nifti_writer = LabelMapNiftiWriterOperator(self, output_folder=output, stem=stem, name="nifti_writer")
        self.add_flow(infer, nifti_writer, {("pred", "seg_image")})


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    MASSSegmentationApp().run()
