"""Packaging for cauldron (plain setuptools; see pyproject.toml for tool config)."""

from setuptools import find_packages, setup

setup(
    name="cauldron",
    version="0.1.0",
    description="KTL-style keyword control system on Twisted and ZeroMQ",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(exclude=["tests*", "docs*", "bench*"]) + ["twisted.plugins"],
    # The web view's own JavaScript and CSS (cauldron/web/static).
    package_data={"cauldron.web": ["static/*.js", "static/*.css"]},
    install_requires=[
        "twisted>=22.10",
        "txzmq>=1.0.0",
        "pyzmq>=25",
        "zope.interface>=5",
        "msgspec>=0.18",
        "crochet>=2.0",
        "tomli>=2; python_version<'3.11'",
    ],
    extras_require={
        # The PostgreSQL driver of the archiver (SQLite needs nothing extra);
        # the binary build ships libpq, so nothing is compiled.
        "postgres": ["psycopg[binary]>=3.1"],
        "test": ["pytest", "hypothesis", "psycopg[binary]>=3.1", "playwright>=1.40"],
        "docs": ["sphinx"],
    },
    entry_points={
        "console_scripts": [
            "cauldron = cauldron.cli:main",
            "Cauldron-router-zmq = cauldron.cli:routerMain",
        ],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
    ],
)
