"""One storage package, two faces, one publish contract.

- `files`        the Airflow-free core: file:// and s3:// through fsspec. The trainer and evaluator
                 images use it (their S3 credentials come from the pod's identity); in Airflow it
                 routes through the adapter below so the AWS connection applies.
- `objectstore`  the thin ObjectStoragePath adapter for tasks (the project's connection from settings).

The publish contract, everywhere: a published directory becomes visible as a whole. On a local
filesystem a complete staged copy is renamed into place in one step (`files.swap_into_place`);
on S3, which has no rename, the data objects are written first and one marker object last
(`manifest.json` for datasets, `result.json` for a training run or an evaluation), and readers
trust only what a marker vouches for.
"""
