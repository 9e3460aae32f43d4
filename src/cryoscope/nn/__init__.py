"""Neural-network pieces shared by the learning engines (gan, vaegan, conceptgan): losses and layers."""
