"""The pipeline graph: match → decode → (skip known) → batch → extract with both models →
divergence → Parquet."""

import apache_beam as beam

from transforms.extract import ERRORS_TAG as EXTRACT_ERRORS_TAG
from transforms.extract import ExtractFeaturesFn, to_feature_rows
from transforms.image_decode import DecodeImageFn
from transforms.incremental import SKIPPED_TAG as KNOWN_TAG
from transforms.incremental import SkipKnownImagesFn
from transforms.output import WriteTable
from transforms.read import MatchImageFiles, output_folder_to_exclude


def build_pipeline(pipeline, job, spec, paths, run_metadata, known=None, extract_options=None):
    """Adds every step of a run to pipeline.

    Args:
      job: the parsed job flags (pipeline.options).
      spec: transforms.models.ExtractorSpec of the two models.
      paths: transforms.output.RunPaths of this run.
      run_metadata: JSON-ready dict stored in every Parquet file's schema metadata.
      known: {image_key: run_id} of images to skip (incremental runs), or None.
      extract_options: extra keyword arguments of ExtractFeaturesFn (threads, progress).
    """
    images, skipped = pipeline | "MatchImageFiles" >> MatchImageFiles(
        job.input, exclude_folder=output_folder_to_exclude(job.output)
    )

    decoded = images | "DecodeImages" >> beam.ParDo(
        DecodeImageFn(job.resize_filter, job.max_image_pixels)
    ).with_outputs(DecodeImageFn.ERRORS_TAG, main="images")
    to_extract = decoded.images
    skipped_parts = [skipped]

    # NOTE: known images are recognised by their content hash after decoding, so an
    # incremental run still decodes every file. Checking before decoding would save
    # that time on folders that are mostly done.
    if known is not None:
        known_images = pipeline | "ListKnownImages" >> beam.Create(sorted(known.items()))
        split = to_extract | "SkipKnownImages" >> beam.ParDo(
            SkipKnownImagesFn(), known=beam.pvalue.AsDict(known_images)
        ).with_outputs(KNOWN_TAG, main="images")
        to_extract = split.images
        skipped_parts.append(split[KNOWN_TAG])

    extracted = (
        to_extract
        | "BatchImages" >> beam.BatchElements(min_batch_size=job.batch_size, max_batch_size=job.batch_size)
        | "ExtractInceptionFeatures"
        >> beam.ParDo(
            ExtractFeaturesFn(
                spec,
                job.device,
                job.batch_size,
                check_determinism=job.check_determinism,
                **(extract_options or {}),
            )
        ).with_outputs(EXTRACT_ERRORS_TAG, main="batches")
    )
    feature_rows = extracted.batches | "ComputeDivergence" >> beam.FlatMap(to_feature_rows)

    errors = (
        decoded[DecodeImageFn.ERRORS_TAG],
        extracted[EXTRACT_ERRORS_TAG],
    ) | "MergeErrors" >> beam.Flatten()
    all_skipped = skipped_parts | "MergeSkipped" >> beam.Flatten()

    feature_rows | "WriteFeatures" >> WriteTable(paths, "features", run_metadata, job.rows_per_file)
    errors | "WriteErrors" >> WriteTable(paths, "errors", run_metadata, job.rows_per_file)
    all_skipped | "WriteSkipped" >> WriteTable(paths, "skipped", run_metadata, job.rows_per_file)
