"""The pipeline graph: match → decode → batch → extract with both models → divergence →
Parquet."""

import apache_beam as beam

from transforms import columns
from transforms.extract import ERRORS_TAG as EXTRACT_ERRORS_TAG
from transforms.extract import ExtractFeaturesFn, to_feature_rows
from transforms.image_decode import DecodeImageFn
from transforms.output import WriteTable
from transforms.read import MatchImageFiles


def build_pipeline(pipeline, job, spec, paths, run_metadata):
    """Adds every step of a run to pipeline.

    Args:
      job: the parsed job flags (pipeline.options).
      spec: transforms.models.ExtractorSpec of the two models.
      paths: transforms.output.RunPaths of this run.
      run_metadata: JSON-ready dict stored in every Parquet file's schema metadata.
    """
    images, skipped = pipeline | "MatchImageFiles" >> MatchImageFiles(job.input)

    decoded = images | "DecodeImages" >> beam.ParDo(
        DecodeImageFn(job.resize_filter, job.max_image_pixels)
    ).with_outputs(DecodeImageFn.ERRORS_TAG, main="images")

    extracted = (
        decoded.images
        | "BatchImages" >> beam.BatchElements(min_batch_size=job.batch_size, max_batch_size=job.batch_size)
        | "ExtractInceptionFeatures"
        >> beam.ParDo(ExtractFeaturesFn(spec, job.device)).with_outputs(EXTRACT_ERRORS_TAG, main="batches")
    )
    feature_rows = extracted.batches | "ComputeDivergence" >> beam.FlatMap(to_feature_rows)

    errors = (
        decoded[DecodeImageFn.ERRORS_TAG],
        extracted[EXTRACT_ERRORS_TAG],
    ) | "MergeErrors" >> beam.Flatten()

    feature_rows | "WriteFeatures" >> WriteTable(paths, "features", columns.FEATURES_SCHEMA, run_metadata)
    errors | "WriteErrors" >> WriteTable(paths, "errors", columns.ERRORS_SCHEMA, run_metadata)
    skipped | "WriteSkipped" >> WriteTable(paths, "skipped", columns.SKIPPED_SCHEMA, run_metadata)
