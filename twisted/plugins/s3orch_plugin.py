from twisted.application.service import ServiceMaker

s3orch = ServiceMaker("s3orch", "s3orch.tap", "S3 orchestrator", "s3orch")
