"""Packaging for inception-parity: installable locally and on Beam workers of any runner."""

import setuptools

setuptools.setup(
    name="inception-parity",
    version="0.1.0",
    description=(
        "Apache Beam pipeline that extracts InceptionV3 features with TF Hub and Keras "
        "and measures how far apart they are"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.14",
    packages=["pipeline", "transforms"],
    install_requires=[
        "apache-beam>=2.60,<3",
        "tensorflow>=2.16,<2.22",
        "tensorflow-hub>=0.16,<0.17",
        "numpy>=1.26,<3",
        "pyarrow>=14",
        "pillow>=10.1",
    ],
    extras_require={
        "gcp": ["apache-beam[gcp]>=2.60,<3"],
        "aws": ["apache-beam[aws]>=2.60,<3"],
        "report": ["matplotlib>=3.7"],
        "read": ["pandas>=2", "duckdb>=1"],
        "test": ["pytest>=8", "pandas>=2", "duckdb>=1", "ruff>=0.6"],
        "bench": ["psutil>=5", "pandas>=2", "matplotlib>=3.7"],
    },
    entry_points={"console_scripts": ["inception-parity=pipeline.cli:main"]},
)
