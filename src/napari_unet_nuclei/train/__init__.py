"""Training: the objective, targets, patches, augmentation, annotations and the choice by nuclei."""
