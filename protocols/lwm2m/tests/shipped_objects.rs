//! The object definitions shipped in `config/lwm2m_xml` all load, and
//! cover the core objects 0–7 and the IPSO sensors the gateway types.

use std::path::PathBuf;

use tributary_lwm2m::model::{Path, ResourceType};
use tributary_lwm2m::Registry;

#[test]
fn shipped_definitions_load() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config/lwm2m_xml");
    let (reg, errors) = Registry::load_dir(&dir).expect("directory");
    assert!(errors.is_empty(), "{errors:?}");
    for id in (0..=7).chain([3300, 3303, 3304, 3311, 3323, 3336, 3342, 3347, 3350]) {
        assert!(reg.object(id).is_some(), "object {id} missing");
    }
    let t = |p: &str| reg.resource_type(&Path::parse(p).expect("path"));
    assert_eq!(t("/3/0/13"), Some(ResourceType::Time));
    assert_eq!(t("/3/0/6/0"), Some(ResourceType::Integer));
    assert_eq!(t("/3303/0/5700"), Some(ResourceType::Float));
    assert_eq!(t("/1/0/6"), Some(ResourceType::Boolean));
    assert_eq!(t("/3/0/4"), Some(ResourceType::None));
    assert!(reg.object(0).expect("security").multiple);
    assert!(!reg.object(3).expect("device").multiple);
}
