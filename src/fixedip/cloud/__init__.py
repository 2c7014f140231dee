"""Cloud-side automation (AWS Hyperplane-ENI Elastic IPs); boto3 and the standard library only."""
