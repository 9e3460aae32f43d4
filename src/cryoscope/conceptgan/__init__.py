"""ConceptGAN (Gong et al. 2018): two binary concepts learnt as composable image transfers, to synthesise an unseen sub-domain."""
