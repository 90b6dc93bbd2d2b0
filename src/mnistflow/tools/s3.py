"""S3, or an S3-compatible store (MinIO, Ceph, moto), for the team server's artifacts and the DVC
remote: one look at the bucket before anything is sent, so that wrong credentials, a missing
bucket or an endpoint nobody answers is one line naming what to fix, not a traceback or DVC's
"unexpected error - Forbidden" once the transfer has begun.

    mnistflow remote-check [-r REMOTE]   the DVC remote (default: the default one); `make push`,
                                          `pull`, `exp-push` and `exp-pull` run it first

A remote that is not on S3 passes without a word (DVC says what is wrong with the others)."""
from __future__ import annotations

import logging
from pathlib import Path

from mnistflow.cli import Parser
from mnistflow.core.errors import MnistflowError, run_stage

REFUSED = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken", "403"}


def check_bucket(url: str, what: str, fix: dict[str, str], endpoint: str | None = None, key: str | None = None,
                 secret: str | None = None, region: str | None = None, profile: str | None = None) -> None:
    """List at most one key under `url` (s3://bucket/prefix) as these credentials (None: boto3's
    own chain: AWS_* variables, ~/.aws). `fix` says, per cause (credentials, endpoint, bucket),
    what the user changes; `what` names the store in the message."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

    logging.getLogger("botocore.credentials").setLevel(logging.WARNING)  # "Found credentials in ...": noise
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    where = endpoint or "AWS"
    try:
        session = boto3.session.Session(aws_access_key_id=key, aws_secret_access_key=secret, region_name=region,
                                        profile_name=profile)
        s3 = session.client("s3", endpoint_url=endpoint,
                            config=Config(connect_timeout=5, read_timeout=20, retries={"max_attempts": 2}))
        s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except NoCredentialsError:
        raise MnistflowError(f"{what}: no S3 credentials: {fix['credentials']}") from None
    except EndpointConnectionError:
        raise MnistflowError(f"{what}: no S3 server answers at {where}: {fix['endpoint']}") from None
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code"))
        if code == "NoSuchBucket":
            raise MnistflowError(f"{what}: there is no bucket {bucket!r} at {where}: create it, or "
                                 f"{fix['bucket']}") from None
        if code in REFUSED:
            raise MnistflowError(f"{what}: {where} refused the credentials ({code}): {fix['credentials']}") from None
        raise MnistflowError(f"{what}: {where} answered {code} ({error.get('Message', exc)})") from None
    except BotoCoreError as exc:  # a profile that is not there, a malformed endpoint URL, ...
        raise MnistflowError(f"{what}: {exc}") from None


def check_dvc_remote(root: Path | str = ".", name: str | None = None) -> None:
    """The DVC remote `name` (default: the default remote), as DVC would reach it."""
    from mnistflow.tracking.dvc_internals import remote_config

    found = remote_config(root, name)
    if found is None or not found[1]["url"].startswith("s3://"):
        return
    name, conf = found
    check_bucket(conf["url"], f"DVC remote {name!r} ({conf['url']})", {
        "credentials": f"dvc remote modify --local {name} access_key_id <key>, and secret_access_key <secret> "
                       "(or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
        "endpoint": f"dvc remote modify {name} endpointurl <your S3 server's URL> (none for AWS)",
        "bucket": f"dvc remote modify {name} url s3://<bucket>/<path>"},
        endpoint=conf.get("endpointurl"), key=conf.get("access_key_id"), secret=conf.get("secret_access_key"),
        region=conf.get("region"), profile=conf.get("profile"))


def main(argv: list[str] | None = None, prog: str = "mnistflow remote-check") -> None:
    parser = Parser(prog=prog, description="Can the DVC remote's S3 bucket be reached with its credentials?")
    parser.add_argument("-r", "--remote", help="a DVC remote's name (default: the default remote)")
    args = parser.parse_args(argv)
    check_dvc_remote(".", args.remote)


if __name__ == "__main__":
    run_stage(main)
