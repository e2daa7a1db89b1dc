"""isnet: LRP-Flex explanations and ISNet training."""
