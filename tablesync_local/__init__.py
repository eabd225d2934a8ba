"""tablesync-local: the embedded AWS emulator that tablesync is tested and demonstrated against.

It serves moto (Kinesis, DynamoDB and its Streams, STS, SQS, S3, IAM, CloudFormation) over
HTTP/1.1 and h2c on one port (:mod:`.server`), corrects moto where it differs from AWS in ways the
product relies on (:mod:`.moto_fixes`), emulates the Kinesis streaming destination of a DynamoDB
table (:mod:`.destination`), and starts local stacks and fleets of real ``tablesync run`` workers
(:mod:`.stack`, :mod:`.fleet`).

Contract:

1. It is the oracle. A test on the local stack proves something only if the stack refuses what AWS
   refuses, so every DynamoDB rule the product could break is enforced here with the service's own
   error code and message (:mod:`.items` holds the value, size and key rules), and every deviation
   of moto that matters is fixed with a comment saying what AWS does.
2. It shares no domain code with the product: nothing here imports ``kcl_app``. Item sizes, item
   canonicalisation, key ids and lease-table reading are written again here on purpose, from the
   AWS documentation, so that a bug in the product's copy cannot hide itself by agreeing with the
   oracle. (It starts the product only as a separate process, ``python -m kcl_app.cli run``.)
3. It is not part of the production distribution. The ``tablesync`` wheel packages ``kcl_app``
   only; this package is its own distribution (``tablesync-local``, ``tablesync_local/pyproject.toml``),
   installed by ``make setup`` for the demo and the tests.
"""
