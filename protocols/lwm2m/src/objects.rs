//! The object registry: OMA object definition files (the LwM2M DDF XML
//! schema, `<LWM2M><Object><ObjectID>…<Resources><Item ID=…>`) loaded from a
//! directory, used to give TLV and text values a type and to choose how to
//! encode writes.
//!
//! A file that does not parse is reported (path and reason) and skipped by
//! the loader's caller; a later file defining the same object id replaces
//! the earlier one (files are read in name order, so that is stable).

use std::collections::HashMap;
use std::path::Path as FsPath;

use crate::model::{Path, ResourceType};

/// One resource of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceDef {
    /// Resource id.
    pub id: u16,
    /// Name (`Manufacturer`).
    pub name: String,
    /// Operations: `R`, `W`, `RW`, `E` or empty.
    pub operations: String,
    /// Multiple instances.
    pub multiple: bool,
    /// Mandatory.
    pub mandatory: bool,
    /// Data type.
    pub rtype: ResourceType,
}

/// One object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectDef {
    /// Object id.
    pub id: u16,
    /// Name (`Device`).
    pub name: String,
    /// Multiple instances.
    pub multiple: bool,
    /// Resources by id.
    pub resources: HashMap<u16, ResourceDef>,
}

/// An object definition file that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct XmlError {
    /// The file (or `<string>`).
    pub file: String,
    /// Why.
    pub reason: String,
}

/// Object definitions by id.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    objects: HashMap<u16, ObjectDef>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Load every `*.xml` file in `dir` (name order). Returns the registry
    /// and the files that failed; an unreadable directory is an error.
    pub fn load_dir(dir: &FsPath) -> std::io::Result<(Registry, Vec<XmlError>)> {
        let mut files: Vec<_> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("xml")))
            .collect();
        files.sort();
        let mut r = Registry::new();
        let mut errors = Vec::new();
        for f in files {
            let name = f.display().to_string();
            match std::fs::read_to_string(&f) {
                Ok(text) => {
                    if let Err(mut e) = r.add_xml(&text) {
                        e.file = name;
                        errors.push(e);
                    }
                }
                Err(e) => errors.push(XmlError {
                    file: name,
                    reason: e.to_string(),
                }),
            }
        }
        Ok((r, errors))
    }

    /// Add the objects defined in one XML document.
    pub fn add_xml(&mut self, text: &str) -> Result<(), XmlError> {
        for o in parse_xml(text)? {
            self.objects.insert(o.id, o);
        }
        Ok(())
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// No objects.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// An object.
    pub fn object(&self, id: u16) -> Option<&ObjectDef> {
        self.objects.get(&id)
    }

    /// The resource a path reaches (`/3/0/1`, `/3/0/7/0`).
    pub fn resource(&self, path: &Path) -> Option<&ResourceDef> {
        let o = self.objects.get(&path.object()?)?;
        o.resources.get(&path.resource()?)
    }

    /// The type of the resource a path reaches, if defined.
    pub fn resource_type(&self, path: &Path) -> Option<ResourceType> {
        self.resource(path).map(|r| r.rtype)
    }
}

fn xml_err(reason: impl Into<String>) -> XmlError {
    XmlError {
        file: "<string>".into(),
        reason: reason.into(),
    }
}

fn child_text<'a>(n: roxmltree::Node<'a, 'a>, tag: &str) -> Option<&'a str> {
    n.children()
        .find(|c| c.is_element() && c.tag_name().name() == tag)
        .map(|c| c.text().unwrap_or("").trim())
}

/// Parse a DDF document into object definitions.
pub fn parse_xml(text: &str) -> Result<Vec<ObjectDef>, XmlError> {
    let doc = roxmltree::Document::parse(text).map_err(|e| xml_err(e.to_string()))?;
    let mut out = Vec::new();
    for o in doc
        .descendants()
        .filter(|n| n.is_element() && n.tag_name().name() == "Object")
    {
        let id: u16 = child_text(o, "ObjectID")
            .ok_or_else(|| xml_err("Object without ObjectID"))?
            .parse()
            .map_err(|_| xml_err("ObjectID is not a number"))?;
        let name = child_text(o, "Name").unwrap_or("").to_string();
        let multiple = child_text(o, "MultipleInstances") == Some("Multiple");
        let mut resources = HashMap::new();
        if let Some(rs) = o
            .children()
            .find(|c| c.is_element() && c.tag_name().name() == "Resources")
        {
            for item in rs
                .children()
                .filter(|c| c.is_element() && c.tag_name().name() == "Item")
            {
                let rid: u16 = item
                    .attribute("ID")
                    .ok_or_else(|| xml_err(format!("object {id}: Item without ID")))?
                    .parse()
                    .map_err(|_| xml_err(format!("object {id}: Item ID is not a number")))?;
                let t = child_text(item, "Type").unwrap_or("");
                let rtype = ResourceType::parse(t).ok_or_else(|| {
                    xml_err(format!("object {id} resource {rid}: unknown Type {t:?}"))
                })?;
                resources.insert(
                    rid,
                    ResourceDef {
                        id: rid,
                        name: child_text(item, "Name").unwrap_or("").to_string(),
                        operations: child_text(item, "Operations").unwrap_or("").to_string(),
                        multiple: child_text(item, "MultipleInstances") == Some("Multiple"),
                        mandatory: child_text(item, "Mandatory") == Some("Mandatory"),
                        rtype,
                    },
                );
            }
        }
        out.push(ObjectDef {
            id,
            name,
            multiple,
            resources,
        });
    }
    if out.is_empty() {
        return Err(xml_err("no <Object> element"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEVICE: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<LWM2M xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <Object ObjectType="MODefinition">
    <Name>Device</Name>
    <ObjectID>3</ObjectID>
    <MultipleInstances>Single</MultipleInstances>
    <Mandatory>Mandatory</Mandatory>
    <Resources>
      <Item ID="0"><Name>Manufacturer</Name><Operations>R</Operations>
        <MultipleInstances>Single</MultipleInstances><Mandatory>Optional</Mandatory>
        <Type>String</Type></Item>
      <Item ID="4"><Name>Reboot</Name><Operations>E</Operations>
        <MultipleInstances>Single</MultipleInstances><Mandatory>Mandatory</Mandatory>
        <Type></Type></Item>
      <Item ID="6"><Name>Available Power Sources</Name><Operations>R</Operations>
        <MultipleInstances>Multiple</MultipleInstances><Mandatory>Optional</Mandatory>
        <Type>Integer</Type></Item>
    </Resources>
  </Object>
</LWM2M>"#;

    #[test]
    fn loads_a_definition() {
        let mut r = Registry::new();
        r.add_xml(DEVICE).expect("xml");
        let d = r.object(3).expect("device");
        assert_eq!(d.name, "Device");
        assert!(!d.multiple);
        let p = Path::parse("/3/0/6/1").expect("p");
        assert_eq!(r.resource_type(&p), Some(ResourceType::Integer));
        assert!(r.resource(&p).expect("r").multiple);
        let reboot = r.resource(&Path::parse("/3/0/4").expect("p")).expect("r");
        assert_eq!(
            (reboot.rtype, reboot.operations.as_str()),
            (ResourceType::None, "E")
        );
        assert_eq!(r.resource_type(&Path::parse("/3/0").expect("p")), None);
    }

    #[test]
    fn bad_documents_are_errors() {
        assert!(parse_xml("<LWM2M>").is_err());
        assert!(parse_xml("<LWM2M></LWM2M>").is_err());
        assert!(parse_xml("<LWM2M><Object><ObjectID>x</ObjectID></Object></LWM2M>").is_err());
        assert!(parse_xml(
            r#"<LWM2M><Object><ObjectID>1</ObjectID><Resources><Item ID="1"><Type>Weird</Type></Item></Resources></Object></LWM2M>"#
        )
        .is_err());
    }
}
